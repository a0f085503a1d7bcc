//! [`Testbed`]: the whole engine behind `nftpol-testbed` and the kernel tests. A topology of
//! pods on one node, servers in every pod, the real `nftpol run` daemon in the node namespace
//! enforcing a folder of manifests, and probe matrices of real new connections.
//!
//! ```no_run
//! # use nftpol_testbed::{Mode, Testbed};
//! # use nftpol::policy::model::{ClusterState, Protocol};
//! # fn demo(state: &ClusterState, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
//! let mut bed = Testbed::new(Mode::Bridge, state)?;
//! bed.apply(files)?; // waits until the daemon enforces exactly these manifests
//! let matrix = bed.probe_matrix(80, Protocol::Tcp)?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::daemon::{self, Daemon, Status};
use super::kube;
use super::listen::Responder;
use super::manifests::{self, TempDir};
use super::netns::Netns;
use super::probe::{self, Matrix};
use super::sctp;
use super::topology::{Mode, Topology};
use nftpol::policy::model::{ClusterState, ObjectKey, Protocol};

/// The Kubernetes name of the testbed's node (`spec.nodeName` of its pods).
pub const NODE_NAME: &str = "nftpol-testbed";

/// Per-pod handles the prober needs.
#[derive(Debug)]
struct PodHandles {
    key: ObjectKey,
    ips: Vec<IpAddr>,
    netns: File,
    /// Raw SCTP sockets of the pod (IPv4, IPv6) that probes send their INITs from.
    sctp: (OwnedFd, OwnedFd),
}

/// What enforces on the testbed's node.
#[derive(Debug, Clone)]
pub enum Engine {
    /// `nftpol run` on a folder of manifests (the default).
    Nftpol,
    /// An enforcer that reads a real API server, which the testbed writes its objects to (see
    /// [`kube`]): `nftpol daemon` or kube-network-policies.
    Api(Box<kube::Config>),
}

/// A node of network namespaces with its pods, servers and (once manifests are applied) the
/// enforcer: the `nftpol run` daemon, or an [`Engine::Api`] enforcer. Everything is torn down
/// on drop (an API engine's objects are deleted from the API server too).
#[derive(Debug)]
pub struct Testbed {
    // Fields drop in order: the daemon first (it lives in the node namespace), then the servers
    // and sockets, then the namespaces, then the folder.
    daemon: Option<Daemon>,
    process: Option<kube::Process>,
    engine: Engine,
    api: Option<kube::Api>,
    responder: Responder,
    pods: Vec<PodHandles>,
    listening: HashSet<(usize, u16, Protocol)>,
    topology: Topology,
    work: TempDir,
    manifests_dir: PathBuf,
    probe_timeout: Duration,
    apply_timeout: Duration,
    binary: Option<PathBuf>,
    daemon_args: Vec<String>,
}

impl Testbed {
    /// Builds the topology for every pod of `state` that is an endpoint (has an address, is not
    /// hostNetwork, is not terminated), wherever its manifest placed it, and starts servers on
    /// each pod's container ports. The daemon starts at the first [`Testbed::apply`].
    pub fn new(mode: Mode, state: &ClusterState) -> Result<Self> {
        Self::with_engine(mode, state, Engine::Nftpol)
    }

    /// [`Testbed::new`] with another enforcer. An [`Engine::Api`] testbed also places the
    /// canary pods (namespace [`kube::CANARY_NS`]), which probe matrices leave out.
    pub fn with_engine(mode: Mode, state: &ClusterState, engine: Engine) -> Result<Self> {
        let mut endpoints: Vec<(ObjectKey, Vec<IpAddr>)> = state
            .pods
            .iter()
            .filter(|p| p.skip_reason().is_none())
            .map(|p| (p.key.clone(), p.ips.clone()))
            .collect();
        endpoints.sort();
        if endpoints.is_empty() {
            bail!("no pod with an address to place on the testbed");
        }
        // Namespaces of killed earlier runs (their owner pid is gone) would pile up otherwise.
        if let Err(e) = super::cleanup::remove_stale() {
            tracing::debug!("removing stale testbed namespaces: {e:#}");
        }
        let listed = endpoints.len();
        if matches!(engine, Engine::Api(_)) {
            endpoints.extend(kube::canary_endpoints());
        }
        let topology = Topology::new(mode, &endpoints).context("building the topology")?;
        let responder = Responder::start()?;
        let mut pods = Vec::with_capacity(topology.pods.len());
        for pod in &topology.pods[..listed] {
            responder.watch_sctp(&pod.ns)?;
            let socks = pod
                .ns
                .run(|| -> std::io::Result<(OwnedFd, OwnedFd)> {
                    Ok((sctp::raw_socket(true)?, sctp::raw_socket(false)?))
                })?
                .with_context(|| format!("raw SCTP sockets for {}", pod.key))?;
            pods.push(PodHandles {
                key: pod.key.clone(),
                ips: pod.ips.clone(),
                netns: pod.ns.open()?,
                sctp: socks,
            });
        }
        let work = TempDir::new()?;
        let manifests_dir = work.path().join("manifests");
        std::fs::create_dir_all(&manifests_dir)
            .with_context(|| format!("creating {}", manifests_dir.display()))?;
        let api = match &engine {
            Engine::Api(config) => {
                let client = topology
                    .pods
                    .iter()
                    .find(|p| {
                        p.key.namespace == kube::CANARY_NS && p.key.name == kube::CANARY_PODS[0].0
                    })
                    .context("the canary client is not on the testbed")?;
                for server in &topology.pods[listed + 1..] {
                    for port in [kube::CANARY_ALLOW, kube::CANARY_DENY] {
                        responder.listen(&server.ns, &server.ips, port, Protocol::Tcp)?;
                    }
                }
                Some(kube::Api::new(config.cluster.clone(), client.ns.path()))
            }
            Engine::Nftpol => None,
        };
        let mut bed = Testbed {
            daemon: None,
            process: None,
            engine,
            api,
            responder,
            pods,
            listening: HashSet::new(),
            topology,
            work,
            manifests_dir,
            probe_timeout: Duration::from_secs(1),
            apply_timeout: Duration::from_secs(30),
            binary: None,
            daemon_args: Vec::new(),
        };
        bed.listen_on_container_ports(state)?;
        Ok(bed)
    }

    pub fn mode(&self) -> Mode {
        self.topology.mode
    }

    pub fn node_name(&self) -> &str {
        NODE_NAME
    }

    /// The namespace of a pod of the testbed (tests open connections from it).
    pub fn pod_netns(&self, pod: &ObjectKey) -> Result<&Netns> {
        self.topology
            .pods
            .iter()
            .find(|p| &p.key == pod)
            .map(|p| &p.ns)
            .with_context(|| format!("pod {pod} is not on the testbed"))
    }

    /// The node namespace (where nftpol enforces; tests may run `nft` there).
    pub fn node(&self) -> &Netns {
        &self.topology.node
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The folder the daemon watches.
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests_dir
    }

    /// How long a probe waits before it counts as denied (default 1 s, as upstream).
    pub fn set_probe_timeout(&mut self, timeout: Duration) {
        self.probe_timeout = timeout;
    }

    /// How long [`Testbed::apply`] waits for the daemon (default 30 s).
    pub fn set_apply_timeout(&mut self, timeout: Duration) {
        self.apply_timeout = timeout;
    }

    /// The `nftpol` binary to run (default: [`daemon::find_binary`]).
    pub fn set_binary(&mut self, path: impl Into<PathBuf>) {
        self.binary = Some(path.into());
    }

    /// Extra arguments of `nftpol run` (e.g. `--metrics-addr`, `--strict`); they take effect
    /// when the daemon starts, at the first apply.
    pub fn set_daemon_args(&mut self, args: Vec<String>) {
        self.daemon_args = args;
    }

    /// `GET path` on `127.0.0.1:port` from inside the node namespace, where the daemon serves
    /// `/metrics`, `/livez` and `/readyz`: the status code and the body.
    pub fn http_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        daemon::http_get(&self.topology.node, port, path)
    }

    /// The daemon's log so far (empty before the first apply).
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("daemon.log")).unwrap_or_default()
    }

    /// Makes `key` serve `port`/`protocol` (idempotent).
    pub fn listen(&mut self, key: &ObjectKey, port: u16, protocol: Protocol) -> Result<()> {
        let Some(i) = self.pods.iter().position(|p| &p.key == key) else {
            bail!("pod {key} is not on the testbed");
        };
        self.listen_at(i, port, protocol)
    }

    fn listen_at(&mut self, i: usize, port: u16, protocol: Protocol) -> Result<()> {
        if self.listening.contains(&(i, port, protocol)) {
            return Ok(());
        }
        let pod = &self.topology.pods[i];
        self.responder.listen(&pod.ns, &pod.ips, port, protocol)?;
        self.listening.insert((i, port, protocol));
        Ok(())
    }

    fn listen_on_container_ports(&mut self, state: &ClusterState) -> Result<()> {
        for pod in &state.pods {
            let Some(i) = self.pods.iter().position(|p| p.key == pod.key) else {
                continue;
            };
            for cp in &pod.ports {
                self.listen_at(i, cp.port, cp.protocol)?;
            }
        }
        Ok(())
    }

    /// Copies the manifests into the watched folder with every pod that has an address placed
    /// on this node, and waits until the daemon enforces them.
    pub fn apply(&mut self, files: &[PathBuf]) -> Result<Status> {
        let mut objects = manifests::read_objects(files)?;
        manifests::place_pods(&mut objects, NODE_NAME);
        self.apply_objects(&objects)
    }

    /// Makes the watched folder hold exactly `objects` (as they are: set `spec.nodeName` to
    /// [`NODE_NAME`] on the pods that live here), starts the daemon if needed, and waits until
    /// it reports the folder's fingerprint.
    pub fn apply_objects(&mut self, objects: &[Value]) -> Result<Status> {
        if let Engine::Api(config) = self.engine.clone() {
            let loaded = nftpol::source::manifest::load_values("testbed", objects.iter().cloned())
                .context("loading the testbed's objects")?;
            self.listen_on_container_ports(&loaded.state)?;
            let Some(api) = self.api.as_mut() else {
                bail!("an API engine without its API state");
            };
            api.write(objects)?;
            if self.process.is_none() {
                self.process = Some(kube::Process::start(
                    &config,
                    api,
                    &self.topology.node,
                    NODE_NAME,
                    self.work.path(),
                )?);
            }
            let Some(process) = self.process.as_mut() else {
                bail!("the enforcer is not running");
            };
            api.wait(process, self.apply_timeout)?;
            let generation = api.generation();
            return Ok(Status {
                generation,
                fingerprint: format!("canary-{generation}"),
            });
        }
        manifests::sync_dir(&self.manifests_dir, objects)?;
        let dirs = [self.manifests_dir.clone()];
        // Check the input here: a daemon that cannot load it would only time out.
        let loaded =
            nftpol::source::manifest::load(&dirs).context("loading the testbed's manifests")?;
        self.listen_on_container_ports(&loaded.state)?;
        let fingerprint = nftpol::source::manifest::fingerprint(&dirs)
            .with_context(|| format!("fingerprinting {}", self.manifests_dir.display()))?;
        if self.daemon.is_none() {
            let bin = match &self.binary {
                Some(b) => b.clone(),
                None => daemon::find_binary()?,
            };
            let d = Daemon::start(
                &self.topology.node,
                &bin,
                &self.manifests_dir,
                NODE_NAME,
                &self.work.path().join("status.json"),
                &self.work.path().join("daemon.log"),
                &self.daemon_args,
            )?;
            self.daemon = Some(d);
        }
        let timeout = self.apply_timeout;
        match self.daemon.as_mut() {
            Some(d) => d.wait_for_fingerprint(&fingerprint, timeout),
            None => bail!("the daemon is not running"),
        }
    }

    /// The engine this testbed enforces with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The pid of the running enforcer, if any.
    pub fn enforcer_pid(&self) -> Option<u32> {
        match (&self.daemon, &self.process) {
            (Some(d), _) => Some(d.pid()),
            (_, Some(p)) => Some(p.pid()),
            _ => None,
        }
    }

    /// Stops the enforcer; an API engine's objects stay in the API server, so that
    /// [`Testbed::start_engine`] measures a start on a populated cluster.
    pub fn stop_engine(&mut self) {
        self.daemon = None;
        if let Some(p) = self.process.take() {
            p.stop(&self.topology.node);
        }
    }

    /// Switches an API testbed to another enforcer (stopping the running one). It starts at the
    /// next [`Testbed::apply_objects`] or [`Testbed::start_engine`].
    pub fn set_engine(&mut self, config: kube::Config) -> Result<()> {
        if !matches!(self.engine, Engine::Api(_)) {
            bail!("only a testbed built with an API engine can switch engines");
        }
        self.stop_engine();
        self.engine = Engine::Api(Box::new(config));
        Ok(())
    }

    /// Starts the API engine on what the API server already holds and waits until it
    /// enforces the last generation written; returns how long that took from its start.
    pub fn start_engine(&mut self) -> Result<Duration> {
        let Engine::Api(config) = &self.engine else {
            bail!("start_engine needs an API engine");
        };
        let config = config.clone();
        self.stop_engine();
        let Some(api) = self.api.as_mut() else {
            bail!("an API engine without its API state");
        };
        let mut p = kube::Process::start(
            &config,
            api,
            &self.topology.node,
            NODE_NAME,
            self.work.path(),
        )?;
        api.wait(&mut p, self.apply_timeout)?;
        let took = p.started.elapsed();
        self.process = Some(p);
        Ok(took)
    }

    /// The API state of an API testbed (to write objects and wait for them separately).
    pub fn api(&mut self) -> Option<(&mut kube::Api, Option<&mut kube::Process>)> {
        let p = self.process.as_mut();
        self.api.as_mut().map(|a| (a, p))
    }

    /// Probes every ordered pair of pods (a pod to itself included) on `port`/`protocol`, all
    /// at once. A cell is true when a new connection got through to every address of the
    /// destination in a family the source also has.
    pub fn probe_matrix(&mut self, port: u16, protocol: Protocol) -> Result<Matrix> {
        for i in 0..self.pods.len() {
            self.listen_at(i, port, protocol)?;
        }
        let sources: Vec<probe::Source<'_>> = self
            .pods
            .iter()
            .map(|p| probe::Source {
                netns: &p.netns,
                sctp: &p.sctp,
            })
            .collect();
        let mut probes = Vec::new();
        let mut cells = Vec::new();
        for (s, src) in self.pods.iter().enumerate() {
            for (d, dst) in self.pods.iter().enumerate() {
                for ip in &dst.ips {
                    if src.ips.iter().any(|a| a.is_ipv4() == ip.is_ipv4()) {
                        probes.push(probe::Probe { src: s, dst: *ip });
                        cells.push((s, d));
                    }
                }
            }
        }
        let results = probe::run(
            &sources,
            &self.responder,
            &probes,
            port,
            protocol,
            self.probe_timeout,
        )?;
        let mut allowed: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
        // Pairs without a common family have nothing to probe: they count as denied.
        for src in &self.pods {
            let row = allowed.entry(src.key.to_string()).or_default();
            for dst in &self.pods {
                row.insert(dst.key.to_string(), false);
            }
        }
        let mut seen = HashSet::new();
        for ((s, d), ok) in cells.into_iter().zip(results) {
            let from = self.pods[s].key.to_string();
            let to = self.pods[d].key.to_string();
            let cell = allowed.entry(from).or_default().entry(to).or_insert(true);
            *cell = if seen.insert((s, d)) { ok } else { *cell && ok };
        }
        Ok(Matrix {
            port,
            protocol,
            pods: self.pods.iter().map(|p| p.key.to_string()).collect(),
            allowed,
        })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.stop_engine();
        if let Some(api) = self.api.as_mut()
            && let Err(e) = api.delete_all(Duration::from_secs(60))
        {
            tracing::warn!("deleting the testbed's objects from the API server: {e:#}");
        }
    }
}
