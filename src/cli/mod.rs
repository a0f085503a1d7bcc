//! Command-line subcommands: one file each, parsing done by clap in `main.rs`. `run` and
//! `daemon` share their flags ([`EnforceArgs`]) and their wiring around the engine's event loop
//! (`Engine`); they differ only in the source of the cluster state.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 unusable input (see [`InputError`]).

pub mod cleanup;
pub mod daemon;
pub mod explain;
pub mod flows;
pub mod kubectl;
pub mod render;
pub mod run;
pub mod simulate;

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};

use crate::engine::enforce::{self, Enforcer};
use crate::engine::event_loop::{Config, EventLoop, Input, StateSource};
use crate::observe::flowlog;
use crate::observe::metrics::{self, Metrics};
use crate::source::Sink;
use crate::source::manifest::{self, Loaded};

/// How a node is enforced, whatever the source of the cluster state (`run`, `daemon`).
#[derive(Debug, Clone, clap::Args)]
pub struct EnforceArgs {
    /// Written atomically after every successful apply:
    /// `{"generation", "fingerprint", "applied_at_unix_ms"}`.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Address of /metrics, /livez and /readyz; "" or "off" disables them.
    #[arg(long, default_value = crate::observe::metrics::DEFAULT_ADDR)]
    pub metrics_addr: String,
    /// Shortest time an address learned from a DNS answer allows new connections, in
    /// seconds (a shorter TTL is raised to it).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub dns_min_ttl: u64,
    /// Longest time an address learned from a DNS answer allows new connections, in seconds
    /// (a longer TTL is cut to it).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub dns_max_ttl: u64,
    /// Testing only: keep the DNS hold in the ruleset but start no reader, so that answers
    /// pass the queue unread (`bypass`) and `domainNames` rules learn nothing.
    #[arg(long, hide = true)]
    pub dns_no_reader: bool,
    /// The shape of the ruleset (shared with `render`).
    #[command(flatten)]
    pub ruleset: RulesetArgs,
}

/// `enforce` drops what the policies deny; `audit` drops nothing and logs and counts what
/// would have been dropped (per namespace: the `nftpol.io/enforcement: audit` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Enforce,
    Audit,
}

/// Flags that change the ruleset itself: `run` and `daemon` program it, `render` prints it.
#[derive(Debug, Clone, clap::Args)]
pub struct RulesetArgs {
    /// Also check node-to-pod traffic (kubelet probes included) against ingress policies.
    #[arg(long)]
    pub police_node_traffic: bool,
    /// Cut open connections a change no longer allows (deletes their conntrack entries; the
    /// forward chain also drops TCP packets that would pick a connection up mid-stream, so a
    /// cut one cannot come back). Off: they keep flowing until they close, as conntrack
    /// accepts established traffic.
    #[arg(long)]
    pub strict: bool,
    /// Drop traffic from or to an address of the node's pod CIDRs that belongs to no known
    /// pod, until the pod is known. Off (default): a pod nftpol has not seen yet is not policed
    /// until it has. On: a new pod is policed from its first packet, but cannot talk at all
    /// until nftpol has seen it (a slow API server delays new pods).
    #[arg(long)]
    pub default_deny_unknown: bool,
    /// The node's pod CIDR for `--default-deny-unknown` (repeat for several). `daemon` takes
    /// the Node's spec.podCIDRs when none is given; for `run`, without it nothing is unknown.
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// `audit`: drop nothing on this node; log and count what the policies would drop.
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: Mode,
    /// NFLOG group of the drop, audit and `nftpol.io/log` logs, which nftpol reads and writes
    /// as log lines; `off`: no such logs (drops are still counted).
    #[arg(long, value_name = "GROUP|off", default_value = "100", value_parser = parse_nflog_group)]
    pub nflog_group: NflogGroup,
    /// NFQUEUE number DNS answers to pods with a ClusterNetworkPolicy `domainNames` rule are
    /// held in until their addresses are programmed; `off`: no hold (such rules then match
    /// nothing: fail closed). Only rulesets with a `domainNames` rule use it.
    #[arg(long, value_name = "QUEUE|off", default_value = "7153", value_parser = parse_nflog_group)]
    pub dns_queue: NflogGroup,
}

/// `--nflog-group`: a group number or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NflogGroup(pub Option<u16>);

fn parse_nflog_group(s: &str) -> Result<NflogGroup, String> {
    if s == "off" {
        return Ok(NflogGroup(None));
    }
    s.parse::<u16>()
        .map(|g| NflogGroup(Some(g)))
        .map_err(|_| format!("{s:?} is neither a group number (0-65535) nor \"off\""))
}

impl RulesetArgs {
    /// The ruleset's options. `--mode audit` drops nothing, so it turns off what would drop
    /// outside the per-pod chains: `--default-deny-unknown` and `--strict` (see
    /// [`RulesetArgs::ignored`]).
    pub fn options(&self) -> crate::dataplane::Options {
        let audit = self.mode == Mode::Audit;
        crate::dataplane::Options {
            police_node_traffic: self.police_node_traffic,
            default_deny_unknown: self.default_deny_unknown && !audit,
            strict: self.strict && !audit,
            audit,
            nflog_group: self.nflog_group.0,
            dns_queue: self.dns_queue.0,
        }
    }

    /// Flags that [`RulesetArgs::options`] ignores, said as a warning.
    pub fn ignored(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.mode == Mode::Audit {
            if self.default_deny_unknown {
                out.push("--mode audit drops nothing: --default-deny-unknown is ignored");
            }
            if self.strict {
                out.push("--mode audit cuts nothing: --strict is ignored");
            }
        }
        out
    }
}

/// What `run` and `daemon` set up before their source starts: the event channel (SIGTERM and
/// SIGINT already go to it), metrics and health, and the ruleset's options.
pub(crate) struct Engine {
    tx: Sender<Input>,
    rx: Receiver<Input>,
    pub metrics: Metrics,
    pub options: crate::dataplane::Options,
    status_file: Option<PathBuf>,
    dns_clamp: crate::policy::domain::TtlClamp,
    dns_reader: bool,
}

impl Engine {
    /// Must run before any other thread exists, so that they all inherit the blocked signals.
    pub fn start(args: &EnforceArgs) -> anyhow::Result<Self> {
        // Before anything touches the kernel: an old kernel rejects the first batch with a bare
        // EINVAL, this names the version it needs.
        crate::dataplane::kernel::require_minimum()?;
        let (tx, rx) = mpsc::channel();
        enforce::install_signal_thread(tx.clone(), Input::Shutdown)?;
        let brnf = enforce::report_br_netfilter();
        let metrics = metrics::start(&args.metrics_addr, &brnf)?;
        for warning in args.ruleset.ignored() {
            tracing::warn!("{warning}");
        }
        let mut options = args.ruleset.options();
        if let Some(queue) = options.dns_queue {
            match crate::dataplane::dns::queue_target_supported(queue) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "the kernel refuses the NFQUEUE target (nft_compat, xt_NFQUEUE): DNS answers are not held, domainNames rules learn nothing (fail closed)"
                    );
                    options.dns_queue = None;
                }
                Err(e) => tracing::warn!("probing the NFQUEUE target: {e}"),
            }
        }
        Ok(Self {
            tx,
            rx,
            metrics,
            options,
            status_file: args.status_file.clone(),
            dns_clamp: crate::policy::domain::TtlClamp::new(
                std::time::Duration::from_secs(args.dns_min_ttl),
                std::time::Duration::from_secs(args.dns_max_ttl),
            ),
            dns_reader: !args.dns_no_reader,
        })
    }

    /// Where a source sends its events.
    pub fn sink(&self) -> Sink<Input> {
        Sink::new(self.tx.clone(), Input::Source)
    }

    /// Starts the flow logs and the enforcer, then runs the event loop until a signal.
    pub fn run(self, source: impl StateSource, config: Config) -> anyhow::Result<()> {
        flowlog::start(
            self.options.nflog_group,
            self.tx,
            Input::Flow,
            &self.metrics,
        )?;
        let mut enforcer = Enforcer::new(self.status_file)?.strict(self.options.strict)?;
        enforcer.set_metrics(self.metrics.clone());
        if let Some(queue) = self.options.dns_queue.filter(|_| self.dns_reader) {
            let learner = crate::engine::dns::start(queue, self.dns_clamp, &self.metrics)?;
            enforcer.on_applied(Box::new(move |ruleset, replaced| {
                let mut l = learner.lock().unwrap_or_else(|p| p.into_inner());
                l.set_plan(&ruleset.domains, replaced, std::time::Instant::now());
            }));
        }
        EventLoop::new(source, enforcer, self.metrics, config).run(&self.rx)
    }
}

/// Input the command cannot use at all (exit code 2), as opposed to a runtime failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Loads manifests for a command: unusable input becomes an [`InputError`]; warnings and
/// skipped invalid policies are reported on stderr.
pub fn load_input(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    let loaded = manifest::load(paths).map_err(|e| InputError(e.to_string()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    for skipped in &loaded.invalid {
        eprintln!("error: skipping invalid policy: {skipped}");
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ruleset: RulesetArgs,
    }

    fn parse(args: &[&str]) -> RulesetArgs {
        Cli::parse_from(std::iter::once("nftpol").chain(args.iter().copied())).ruleset
    }

    #[test]
    fn audit_mode_turns_off_what_would_drop_elsewhere() {
        let args = parse(&["--mode", "audit", "--strict", "--default-deny-unknown"]);
        let o = args.options();
        assert!(o.audit && !o.strict && !o.default_deny_unknown);
        assert_eq!(args.ignored().len(), 2);
        let args = parse(&["--strict", "--default-deny-unknown"]);
        let o = args.options();
        assert!(!o.audit && o.strict && o.default_deny_unknown);
        assert!(args.ignored().is_empty());
        assert_eq!(o.nflog_group, Some(100));
        assert_eq!(parse(&["--nflog-group", "off"]).options().nflog_group, None);
        assert_eq!(
            parse(&["--nflog-group", "7"]).options().nflog_group,
            Some(7)
        );
    }
}
