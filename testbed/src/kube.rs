//! Enforcers that read a real kube-apiserver (one made by `hack/kube/up.sh`) instead of a
//! folder: kube-network-policies (sigs.k8s.io/kube-network-policies, the SIG-network
//! reference) or `nftpol daemon`, each run in the testbed's node namespace, which is linked to
//! the API server by `hack/kube/connect.sh`.
//!
//! The testbed writes its objects through kubectl (server-side apply, pod addresses through the
//! status subresource, deletions forced since no kubelet runs) and then waits until the enforcer
//! shows, with real connections, that it has seen every write. Neither enforcer reports what it
//! has applied in a way the other shares, so enforcement is observed the same way for both: a
//! canary written *after* the objects, in every resource kind the objects use. The canary is a
//! namespace with a client pod and two server pods; generation `g` labels the namespace and one
//! server with `g` and points a NetworkPolicy at that server, allowing port [`CANARY_ALLOW`] only
//! from namespaces labelled `g`. The generation counts as enforced when a new connection to
//! [`CANARY_DENY`] on that server is dropped (the enforcer has seen the policy and the pod label
//! and isolates a pod it did not isolate before) and one to [`CANARY_ALLOW`] gets through (it has
//! seen the namespace label). Watches deliver each kind's events in order, so every earlier
//! write of those kinds has been seen too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::cleanup;
use super::netns::Netns;
use nftpol::policy::model::ObjectKey;

/// The namespace of the canary pods.
pub const CANARY_NS: &str = "nftpol-testbed-canary";
/// A port the canary policy allows (from the canary namespace of the current generation).
pub const CANARY_ALLOW: u16 = 7001;
/// A port the canary policy does not allow.
pub const CANARY_DENY: u16 = 7002;
/// The canary pods: a client and two servers that take turns.
pub const CANARY_PODS: [(&str, Ipv4Addr); 3] = [
    ("canary-client", Ipv4Addr::new(10, 254, 0, 10)),
    ("canary-a", Ipv4Addr::new(10, 254, 0, 11)),
    ("canary-b", Ipv4Addr::new(10, 254, 0, 12)),
];
/// The label the canary generation is written in.
const GEN_LABEL: &str = "nftpol-testbed-canary-gen";

/// kube-network-policies' nftables table (removed after a SIGKILL, which skips its cleanup).
pub const KNP_TABLE: &str = "kube-network-policies";

/// Which program enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcer {
    /// `nftpol daemon --kubeconfig ...`
    Nftpol,
    /// kube-network-policies' standard binary with the flags of its install.yaml.
    KubeNetworkPolicies,
}

impl Enforcer {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcer::Nftpol => "nftpol",
            Enforcer::KubeNetworkPolicies => "kube-network-policies",
        }
    }
}

/// A cluster made by `hack/kube/up.sh` (its state folder's `env` file).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub state: PathBuf,
    /// kubectl of the cluster's version.
    pub kubectl: PathBuf,
    /// Admin kubeconfig reachable from the root namespace.
    pub kubeconfig: PathBuf,
    /// The apiserver's advertise address (in its serving certificate).
    pub addr: String,
    pub port: u16,
    pub token_file: PathBuf,
    /// The folder of the hack/kube scripts.
    pub scripts: PathBuf,
}

impl Cluster {
    /// Reads `STATE/env` written by `hack/kube/up.sh`.
    pub fn from_state(state: &Path) -> Result<Self> {
        let env_file = state.join("env");
        let text = std::fs::read_to_string(&env_file).with_context(|| {
            format!(
                "reading {} (start a cluster with hack/kube/up.sh)",
                env_file.display()
            )
        })?;
        let env: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        let get = |k: &str| -> Result<String> {
            env.get(k)
                .map(|v| v.to_string())
                .with_context(|| format!("{k} is not in {}", env_file.display()))
        };
        let server = get("NFTPOL_KUBE_SERVER")?;
        let port = server
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {server}"))?;
        Ok(Self {
            state: state.to_owned(),
            kubectl: PathBuf::from(get("NFTPOL_KUBE_BIN")?).join("kubectl"),
            kubeconfig: PathBuf::from(get("NFTPOL_KUBE_KUBECONFIG")?),
            addr: get("NFTPOL_KUBE_ADDR")?,
            port,
            token_file: PathBuf::from(get("NFTPOL_KUBE_TOKEN_FILE")?),
            scripts: std::env::var_os("NFTPOL_KUBE_SCRIPTS")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    // Not `testbed/..`: the VM of hack/compare/vm.sh has hack/ but no testbed/.
                    let testbed = Path::new(env!("CARGO_MANIFEST_DIR"));
                    testbed.parent().unwrap_or(testbed).join("hack/kube")
                }),
        })
    }

    /// Runs kubectl with the admin kubeconfig; fails with its stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning kubectl")?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .context("writing to kubectl")?;
        }
        let out = child.wait_with_output().context("waiting for kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Links `node` to the API server (`connect.sh`) and routes the apiserver's advertise
    /// address over that link, so that a client which checks the serving certificate (as
    /// in-cluster clients do) reaches it by an address the certificate names. Returns the
    /// admin kubeconfig written for the node.
    pub fn connect(&self, node: &Netns, out: &Path) -> Result<PathBuf> {
        let text = run_script(
            &self.scripts.join("connect.sh"),
            &[
                &self.state.to_string_lossy(),
                node.name(),
                &out.to_string_lossy(),
            ],
        )?;
        let server = text
            .lines()
            .find_map(|l| l.strip_prefix("NFTPOL_KUBE_PEER_SERVER="))
            .context("connect.sh printed no NFTPOL_KUBE_PEER_SERVER")?;
        let gw = server
            .trim_start_matches("https://")
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .context("no host in the peer server")?;
        node.ip(&["route", "replace", &format!("{}/32", self.addr), "via", &gw])?;
        Ok(out.to_owned())
    }

    /// The apiserver's serving certificate chain (it generated it itself).
    pub fn ca_file(&self) -> PathBuf {
        self.state.join("certs/apiserver.crt")
    }
}

fn run_script(script: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            script.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(kind, namespace, name)`
type Key = (String, String, String);

fn key_of(obj: &Value) -> Result<Key> {
    let kind = obj["kind"].as_str().context("an object without kind")?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .with_context(|| format!("a {kind} without a name"))?;
    let ns = match kind {
        "Namespace" | "AdminNetworkPolicy" => "",
        _ => obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
    };
    Ok((kind.to_string(), ns.to_string(), name.to_string()))
}

fn order(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "Pod" => 1,
        _ => 2,
    }
}

/// What the API server holds on the testbed's behalf, so that each sync writes only changes.
#[derive(Debug, Default)]
struct Written {
    objects: BTreeMap<Key, Value>,
    statuses: BTreeMap<Key, Value>,
}

/// What the testbed wrote to the API server, and the canary's generation.
#[derive(Debug)]
pub struct Api {
    cluster: Cluster,
    written: Written,
    generation: u64,
    /// The canary client's namespace file.
    canary_client: PathBuf,
    /// The node's kubeconfig, once the node is linked to the API server.
    kubeconfig: Option<PathBuf>,
}

/// A running API-reading enforcer.
#[derive(Debug)]
pub struct Process {
    pub enforcer: Enforcer,
    binary: PathBuf,
    child: Child,
    log: PathBuf,
    pub started: Instant,
}

/// Everything to start an enforcer against a cluster.
#[derive(Debug, Clone)]
pub struct Config {
    pub enforcer: Enforcer,
    pub binary: PathBuf,
    pub cluster: Cluster,
    /// Extra arguments for the enforcer.
    pub args: Vec<String>,
}

/// kube-network-policies' flags here: those of its install.yaml (`--hostname-override`,
/// `--nfqueue-id=98`) but the default log level (install.yaml's `--v=2` logs every packet), plus
/// its metrics on loopback and `--disable-nri` (no container runtime runs here; v0.8.0 parses the
/// flag but does not pass it on, so it tries NRI's socket once and carries on).
pub fn knp_args(node_name: &str) -> Vec<String> {
    vec![
        format!("--hostname-override={node_name}"),
        "--nfqueue-id=98".into(),
        "--metrics-bind-address=127.0.0.1:9080".into(),
        "--disable-nri".into(),
    ]
}

fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Process {
    /// Starts the enforcer in `node` with the node's kubeconfig (nftpol) or the in-cluster
    /// configuration (kube-network-policies), logging to `work/daemon.log`.
    pub fn start(
        config: &Config,
        api: &mut Api,
        node: &Netns,
        node_name: &str,
        work: &Path,
    ) -> Result<Self> {
        let kubeconfig = match &api.kubeconfig {
            Some(k) => k.clone(),
            None => {
                let k = config
                    .cluster
                    .connect(node, &work.join("node.kubeconfig"))?;
                api.kubeconfig = Some(k.clone());
                k
            }
        };
        let log = work.join("daemon.log");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context("cloning the log file")?;
        let mut cmd = match config.enforcer {
            Enforcer::Nftpol => {
                let mut c = node.command(&config.binary);
                c.args(["daemon", "--node-name", node_name, "--kubeconfig"])
                    .arg(&kubeconfig)
                    .args(&config.args);
                c
            }
            Enforcer::KubeNetworkPolicies => {
                // v0.8.0 reads only the in-cluster configuration: the service address from the
                // environment and the token and CA from /run/secrets/..., which a private mount
                // namespace provides without touching the host's /run.
                let sa = work.join("serviceaccount");
                std::fs::create_dir_all(&sa)?;
                std::fs::copy(&config.cluster.token_file, sa.join("token"))
                    .context("copying the token")?;
                std::fs::copy(config.cluster.ca_file(), sa.join("ca.crt"))
                    .context("copying the apiserver certificate")?;
                let mut c = node.command("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(
                        "mount -t tmpfs nftpol-testbed /run && \
                         mkdir -p /run/secrets/kubernetes.io && \
                         cp -r \"$1\" /run/secrets/kubernetes.io/serviceaccount && \
                         shift && exec \"$@\"",
                    )
                    .arg("sh")
                    .arg(&sa)
                    .arg(&config.binary)
                    .args(knp_args(node_name))
                    .args(&config.args)
                    .env("KUBERNETES_SERVICE_HOST", &config.cluster.addr)
                    .env("KUBERNETES_SERVICE_PORT", config.cluster.port.to_string());
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure only calls prctl, which is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(|| Ok(set_pdeathsig(Signal::SIGTERM)?));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} in {}", config.enforcer.as_str(), node.name()))?;
        cleanup::register_child(child.id() as i32);
        Ok(Self {
            enforcer: config.enforcer,
            binary: config.binary.clone(),
            child,
            log,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the enforcer and removes what it left in the node (SIGKILL, then `nftpol cleanup`
    /// or deleting kube-network-policies' table: it cleans up itself only on SIGINT, after a 5 s
    /// grace sleep), so that the next engine starts on a node without rules.
    pub fn stop(mut self, node: &Netns) {
        let pid = self.child.id() as i32;
        let _ = self.child.kill();
        let _ = self.child.wait();
        cleanup::unregister_child(pid);
        let done = match self.enforcer {
            Enforcer::KubeNetworkPolicies => {
                node.exec("nft", &["delete", "table", "inet", KNP_TABLE], None)
            }
            Enforcer::Nftpol => node.exec(&self.binary.to_string_lossy(), &["cleanup"], None),
        };
        if let Err(e) = done {
            tracing::debug!("cleaning up after {}: {e:#}", self.enforcer.as_str());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        cleanup::unregister_child(pid);
    }
}

impl Api {
    pub fn new(cluster: Cluster, canary_client: PathBuf) -> Self {
        Self {
            cluster,
            written: Written::default(),
            generation: 0,
            canary_client,
            kubeconfig: None,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Makes the API server hold exactly `objects` plus the next canary generation, without
    /// waiting.
    pub fn write(&mut self, objects: &[Value]) -> Result<()> {
        self.generation += 1;
        let mut desired: BTreeMap<Key, Value> = BTreeMap::new();
        for obj in objects.iter().chain(canary_objects(self.generation).iter()) {
            let kind = obj["kind"].as_str().unwrap_or_default();
            if !matches!(
                kind,
                "Namespace" | "Pod" | "NetworkPolicy" | "AdminNetworkPolicy"
            ) {
                bail!(
                    "the API engines take Namespaces, Pods, NetworkPolicies and \
                     AdminNetworkPolicies (v1alpha1, its CRD installed), not {kind}"
                );
            }
            let key = key_of(obj)?;
            if !key.1.is_empty() {
                let ns_key = ("Namespace".to_string(), String::new(), key.1.clone());
                desired.entry(ns_key).or_insert_with(
                    || json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": key.1}}),
                );
            }
            desired.insert(key, obj.clone());
        }
        self.sync(&desired)
    }
    fn sync(&mut self, desired: &BTreeMap<Key, Value>) -> Result<()> {
        let mut spec_of = BTreeMap::new();
        let mut status_of = BTreeMap::new();
        for (k, obj) in desired {
            let mut o = obj.clone();
            let status = o.as_object_mut().and_then(|m| m.remove("status"));
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                for f in [
                    "resourceVersion",
                    "uid",
                    "creationTimestamp",
                    "managedFields",
                ] {
                    meta.remove(f);
                }
            }
            if k.0 == "Pod"
                && let Some(s) = status
            {
                status_of.insert(k.clone(), s);
            }
            spec_of.insert(k.clone(), o);
        }
        // Pods whose spec changed are recreated (a pod's containers are immutable).
        let mut delete: Vec<Key> = Vec::new();
        for (k, old) in &self.written.objects {
            match spec_of.get(k) {
                None => delete.push(k.clone()),
                Some(new) if k.0 == "Pod" && old["spec"] != new["spec"] => delete.push(k.clone()),
                _ => {}
            }
        }
        // Pods first, namespaces last: the namespace controller could not finish pods bound to
        // a node without a kubelet.
        delete.sort_by_key(|k| std::cmp::Reverse(order(&k.0)));
        let (nss, rest): (Vec<&Key>, Vec<&Key>) = delete.iter().partition(|k| k.0 == "Namespace");
        for batch in [rest, nss] {
            if batch.is_empty() {
                continue;
            }
            let items: Vec<Value> = batch
                .iter()
                .map(|k| {
                    let mut meta = json!({"name": k.2});
                    if !k.1.is_empty() {
                        meta["namespace"] = json!(k.1);
                    }
                    json!({"apiVersion": api_version(&k.0), "kind": k.0, "metadata": meta})
                })
                .collect();
            self.cluster.kubectl(
                &[
                    "delete",
                    "--ignore-not-found",
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                    "-f",
                    "-",
                ],
                Some(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()),
            )?;
        }
        for k in &delete {
            self.written.objects.remove(k);
            self.written.statuses.remove(k);
        }
        let mut changed: Vec<(&Key, &Value)> = spec_of
            .iter()
            .filter(|(k, v)| self.written.objects.get(*k) != Some(*v))
            .collect();
        changed.sort_by_key(|(k, _)| order(&k.0));
        if !changed.is_empty() {
            let items: Vec<Value> = changed.iter().map(|(_, v)| (*v).clone()).collect();
            let applied = self.cluster.kubectl(
                &[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--field-manager=nftpol-testbed",
                    "-f",
                    "-",
                ],
                Some(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()),
            );
            // kubectl applies what it can of a list: after a failure any of these objects may
            // exist, so each is remembered as unknown (written again while wanted, deleted once
            // not).
            for (k, v) in changed {
                let known = if applied.is_ok() {
                    v.clone()
                } else {
                    Value::Null
                };
                self.written.objects.insert(k.clone(), known);
            }
            applied?;
        }
        let statuses: Vec<(&Key, &Value)> = status_of
            .iter()
            .filter(|(k, v)| self.written.statuses.get(*k) != Some(*v))
            .collect();
        if !statuses.is_empty() {
            let items: Vec<Value> = statuses
                .iter()
                .map(|(k, s)| {
                    json!({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": k.2, "namespace": k.1}, "status": s})
                })
                .collect();
            self.cluster.kubectl(
                &[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--subresource=status",
                    "--field-manager=nftpol-testbed-status",
                    "-f",
                    "-",
                ],
                Some(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()),
            )?;
            for (k, s) in statuses {
                self.written.statuses.insert(k.clone(), s.clone());
            }
        }
        Ok(())
    }

    /// Polls the canary until the current generation is enforced, the enforcer exits, or
    /// `timeout` passes.
    pub fn wait(&self, process: &mut Process, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let server = canary_server(self.generation);
        let ns = File::open(&self.canary_client)
            .with_context(|| format!("opening {}", self.canary_client.display()))?;
        let probe = |port: u16, t: Duration| -> Result<bool> {
            let dst = SocketAddr::new(IpAddr::V4(server), port);
            connect_from(&ns, dst, t)
        };
        let mut pause = Duration::from_millis(1);
        loop {
            if !probe(CANARY_DENY, Duration::from_millis(250))?
                && probe(CANARY_ALLOW, Duration::from_secs(1))?
            {
                return Ok(());
            }
            if let Some(code) = process.child.try_wait().context("checking the enforcer")? {
                bail!(
                    "{} exited ({code}) before enforcing generation {}; its log:\n{}",
                    process.enforcer.as_str(),
                    self.generation,
                    tail(&process.log, 30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not enforce canary generation {} within {timeout:?}; its log:\n{}",
                    process.enforcer.as_str(),
                    self.generation,
                    tail(&process.log, 30)
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Deletes every object written (pods first, then namespaces, waiting for them to go),
    /// so that another testbed can use the same names.
    pub fn delete_all(&mut self, timeout: Duration) -> Result<()> {
        let nss: Vec<String> = self
            .written
            .objects
            .keys()
            .filter(|k| k.0 == "Namespace")
            .map(|k| format!("namespace/{}", k.2))
            .collect();
        self.sync(&BTreeMap::new())?;
        if !nss.is_empty() {
            let mut args = vec!["wait".to_string(), "--for=delete".into()];
            args.push(format!("--timeout={}s", timeout.as_secs().max(1)));
            args.extend(nss);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.cluster.kubectl(&args, None)?;
        }
        Ok(())
    }
}

/// Whether a new TCP connection from the namespace `ns` to `dst` is established within `t`.
fn connect_from(ns: &File, dst: SocketAddr, t: Duration) -> Result<bool> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<bool> {
            super::netns::enter(ns)?;
            Ok(std::net::TcpStream::connect_timeout(&dst, t).is_ok())
        })
        .join()
        .unwrap_or_else(|_| bail!("the probe thread panicked"))
    })
}

fn api_version(kind: &str) -> &'static str {
    match kind {
        "NetworkPolicy" => "networking.k8s.io/v1",
        "AdminNetworkPolicy" => "policy.networking.k8s.io/v1alpha1",
        _ => "v1",
    }
}

/// The canary server that generation `g` isolates.
pub fn canary_server(g: u64) -> Ipv4Addr {
    CANARY_PODS[1 + (g % 2) as usize].1
}

/// The canary pods' keys and addresses, for the topology.
pub fn canary_endpoints() -> Vec<(ObjectKey, Vec<IpAddr>)> {
    CANARY_PODS
        .iter()
        .map(|(name, ip)| {
            (
                ObjectKey {
                    namespace: CANARY_NS.into(),
                    name: (*name).into(),
                },
                vec![IpAddr::V4(*ip)],
            )
        })
        .collect()
}

/// The canary's objects at generation `g`.
fn canary_objects(g: u64) -> Vec<Value> {
    let gen_s = g.to_string();
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": CANARY_NS, "labels": {GEN_LABEL: gen_s}}
    })];
    for (i, (name, ip)) in CANARY_PODS.iter().enumerate() {
        let mut labels = json!({"app": name});
        if i > 0 && canary_server(g) == *ip {
            labels[GEN_LABEL] = json!(gen_s);
        }
        out.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": CANARY_NS, "labels": labels},
            "spec": {"nodeName": super::NODE_NAME, "containers": [{"name": "c", "image": "none",
                     "ports": [{"containerPort": CANARY_ALLOW}, {"containerPort": CANARY_DENY}]}]},
            "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}
        }));
    }
    out.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "canary", "namespace": CANARY_NS},
        "spec": {
            "podSelector": {"matchLabels": {GEN_LABEL: gen_s}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {GEN_LABEL: gen_s}}}],
                         "ports": [{"protocol": "TCP", "port": CANARY_ALLOW}]}]
        }
    }));
    out
}
