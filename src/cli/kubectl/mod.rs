//! `nftpol kubectl`, also the kubectl plugin `kubectl nftpol` (the same binary installed as
//! `kubectl-nftpol`, see `main.rs`): questions about the live cluster, asked with the user's
//! kubeconfig and permissions, read-only.
//!
//! Wiring only: `explain` and `simulate` read the cluster with `crate::source::live` and
//! answer with the code of `nftpol explain -f` and `simulate -f`; `status` ([`status`]) and
//! `flows` ([`flows`]) read the nftpol pods' metrics and logs through the API server and parse
//! them with `crate::observe`.

pub mod flows;
pub mod status;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::InputError;
use crate::policy::model::Protocol;
use crate::source::live::{self, Scope};

/// The flags kubectl plugins take for the connection (kubectl does not pass its own).
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Kubeconfig file; default: $KUBECONFIG, then ~/.kube/config, then the in-cluster
    /// service account.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; default: its current context.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// explain: the namespace of a pod given without one; simulate: the namespace of the
    /// matrix (default for both: the context's namespace); flows: only lines with a pod of
    /// this namespace (default: every namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Explain the verdict for one connection between live pods.
    Explain(ExplainArgs),
    /// The reachability matrix of the live pods of a namespace (or all) for one port.
    Simulate(SimulateArgs),
    /// The flow logs of the nftpol pods (drops, audit, logged allows).
    Flows(flows::Args),
    /// Per node: whether nftpol is ready, its last apply, failures and drops.
    Status(status::Args),
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The client pod: NAMESPACE/POD, or POD in --namespace.
    #[arg(long)]
    pub from: String,
    /// The server: NAMESPACE/POD, POD in --namespace, or an IP address.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = "TCP")]
    pub protocol: Protocol,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Every pod of the cluster instead of one namespace's (needs cluster-wide list rights).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub probes: super::simulate::ProbeArgs,
    /// `json`: one matrix object for one probe, an array of them for several. `html`: one
    /// self-contained page (matrix, explanations, namespace summary, filters).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: super::simulate::Output,
}

/// A client for the user's kubeconfig (or the in-cluster account) and its default namespace.
/// `retry`: retry 429, 503 and 504 answers (kube's default).
async fn client(connection: &Connection, retry: bool) -> anyhow::Result<(kube::Client, String)> {
    let options = kube::config::KubeConfigOptions {
        context: connection.context.clone(),
        ..Default::default()
    };
    let config = match (&connection.kubeconfig, &connection.context) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("using {}", path.display()))?
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("using context {context:?} of the kubeconfig"))?,
        (None, None) => kube::Config::infer()
            .await
            .context("no kubeconfig ($KUBECONFIG, ~/.kube/config) and no in-cluster account")?,
    };
    let namespace = config.default_namespace.clone();
    let mut config = config;
    config.default_retry = retry;
    let client = kube::Client::try_from(config).context("creating the Kubernetes client")?;
    Ok((client, namespace))
}

/// `NAMESPACE/POD` as given, or `POD` in `namespace`.
fn qualify(pod: &str, namespace: &str) -> String {
    if pod.contains('/') {
        pod.to_string()
    } else {
        format!("{namespace}/{pod}")
    }
}

fn namespace_of(pod: &str) -> anyhow::Result<String> {
    pod.split_once('/')
        .map(|(ns, _)| ns.to_string())
        .filter(|ns| !ns.is_empty())
        .ok_or_else(|| InputError(format!("{pod:?} is not NAMESPACE/POD")).into())
}

async fn explain(client: kube::Client, ns: String, args: ExplainArgs) -> anyhow::Result<()> {
    let from = qualify(&args.from, &ns);
    let mut namespaces = BTreeSet::from([namespace_of(&from)?]);
    let to = match args.to.parse::<IpAddr>() {
        Ok(ip) => {
            // The address may be a pod of any namespace: its policies and labels count.
            namespaces.extend(live::namespaces_of_ip(&client, ip).await?);
            args.to.clone()
        }
        Err(_) => {
            let to = qualify(&args.to, &ns);
            namespaces.insert(namespace_of(&to)?);
            to
        }
    };
    let scope = Scope::Namespaces(namespaces);
    let loaded = live::load(&client, &scope).await?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let origin = format!("the cluster ({scope})");
    let text = super::explain::answer(&loaded, &from, &to, args.port, args.protocol, &origin)?;
    print!("{text}");
    Ok(())
}

async fn simulate(client: kube::Client, ns: String, args: SimulateArgs) -> anyhow::Result<()> {
    let scope = if args.all_namespaces {
        Scope::All
    } else {
        Scope::Namespaces(BTreeSet::from([ns]))
    };
    let origin = match &scope {
        Scope::All => "the cluster (all namespaces)".to_string(),
        Scope::Namespaces(ns) => format!(
            "the cluster (namespace {})",
            ns.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    let loaded = live::load(&client, &scope).await?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    super::simulate::report(&loaded, &args.probes.probes(), args.output, &origin)
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Through pods/proxy, a 503 is the node's own answer (/readyz not ready, nothing
        // listening): retrying it only delays the table.
        let retry = !matches!(args.command, Command::Status(_));
        let (client, context_ns) = client(&args.connection, retry).await?;
        let given = args.connection.namespace;
        let ns = given.clone().unwrap_or(context_ns);
        match args.command {
            Command::Explain(a) => explain(client, ns, a).await,
            Command::Simulate(a) => simulate(client, ns, a).await,
            Command::Flows(a) => flows::execute(client, a, given.as_deref()).await,
            Command::Status(a) => status::execute(client, a).await,
        }
    })
}

/// Where the nftpol pods are (`status`, `flows`).
#[derive(Debug, Clone, clap::Args)]
pub struct Daemons {
    /// The namespace of the nftpol DaemonSet.
    #[arg(long, default_value = "kube-system")]
    pub nftpol_namespace: String,
    /// The label selector of its pods.
    #[arg(long, default_value = "app.kubernetes.io/name=nftpol")]
    pub selector: String,
}

impl Daemons {
    /// The nftpol pods, by node name.
    async fn pods(
        &self,
        client: &kube::Client,
    ) -> anyhow::Result<Vec<k8s_openapi::api::core::v1::Pod>> {
        use k8s_openapi::api::core::v1::Pod;
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &self.nftpol_namespace);
        let params = kube::api::ListParams::default().labels(&self.selector);
        let mut pods = api
            .list(&params)
            .await
            .map_err(|e| {
                live::LiveError::from_api("list", "pods", Some(&self.nftpol_namespace), e)
            })?
            .items;
        anyhow::ensure!(
            !pods.is_empty(),
            "no nftpol pods (namespace {:?}, selector {:?}): is nftpol installed? (--nftpol-namespace, --selector)",
            self.nftpol_namespace,
            self.selector
        );
        pods.sort_by_key(|p| node_of(p).to_string());
        Ok(pods)
    }
}

/// The node a pod runs on, `-` if not scheduled.
fn node_of(pod: &k8s_openapi::api::core::v1::Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("-")
}

/// A pod's name, `-` if it has none.
fn name_of(pod: &k8s_openapi::api::core::v1::Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_without_a_namespace_take_the_default_one() {
        assert_eq!(qualify("web", "shop"), "shop/web");
        assert_eq!(qualify("db/pg", "shop"), "db/pg");
        assert_eq!(namespace_of("db/pg").unwrap(), "db");
        assert!(namespace_of("/pg").is_err());
    }
}
