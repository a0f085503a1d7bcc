//! Prometheus metrics: owns the registry and the metric handles that the enforcer and the
//! commands update, and [`start`], which puts the registry, the health state
//! ([`super::health`]), the drop counters (`super::drops`) and the server ([`super::http`])
//! together for `run` and `daemon`.
//!
//! Names follow Felix (`felix_int_dataplane_failures` becomes `nftpol_int_dataplane_failures`).
//! prometheus-client writes OpenMetrics, where a counter's sample is always `<name>_total`;
//! Felix's counters are exposed without that suffix, so ours are registered as gauges that only
//! ever go up (their help text says so). `rate()` and `increase()` work on them as on counters.
//!
//! A [`Metrics`] is a cheap handle (an `Arc`): clones share one registry. There is no global.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::drops::DropCollector;
use super::health::Health;
pub use super::health::{HEARTBEAT_EVERY, LIVENESS_TIMEOUT};
pub use super::http::{DEFAULT_ADDR, parse_addr, serve};
use super::process::ProcessCollector;
use crate::dataplane::br_netfilter::BrNetfilter;
use crate::dataplane::{CounterReader, Ruleset, Stats};
use crate::policy::compile::NodePlan;
use crate::policy::model::SkipReason;
use crate::source::{Change, Update};

/// A gauge that only goes up: a Felix-style counter (see the module doc).
type Monotonic = Gauge<u64, AtomicU64>;
type Seconds = Gauge<f64, AtomicU64>;
type Labels = Vec<(&'static str, &'static str)>;

struct Inner {
    registry: Registry,
    started: Instant,
    initial_resync_done: AtomicBool,
    health: Health,
    drops: Arc<DropCollector>,

    dataplane_failures: Monotonic,
    apply_time: Histogram,
    initial_resync_time: Seconds,
    last_apply: Seconds,
    implementation_delay: Histogram,
    active_endpoints: Gauge,
    active_policies: Gauge,
    cluster_policies: Family<Labels, Gauge>,
    isolated: Family<Labels, Gauge>,
    nft_chains: Gauge,
    nft_rules: Gauge,
    nft_set_elements: Gauge,
    nft_transactions: Monotonic,
    nft_errors: Monotonic,
    skipped: Family<Labels, Gauge>,
    br_netfilter: Gauge,
    flow_logs: Family<Labels, Monotonic>,
    flow_logs_lost: Monotonic,
    flow_log_active: Gauge,
    drift_repairs: Monotonic,
    watch_errors: Family<Labels, Monotonic>,
    watch_last_event: Family<Labels, Seconds>,
    strict_cut: Monotonic,
    strict_sweep_time: Histogram,
    dns_hold_time: Histogram,
    dns: Arc<DnsCounters>,
    /// The DNS reader's learned names by address, as JSON (`/dns`); `None` without a reader.
    dns_names: std::sync::Mutex<Option<DnsNames>>,
    /// The names learned for one address, `name (rule)` (flow logs).
    dns_lookup: std::sync::Mutex<Option<DnsLookup>>,
}

/// See [`Metrics::serve_dns_names`].
pub type DnsLookup = Box<dyn Fn(std::net::IpAddr) -> Vec<String> + Send + Sync>;

/// See [`Metrics::serve_dns_names`].
pub type DnsNames = Box<dyn Fn() -> String + Send + Sync>;

/// Counters of the DNS reader of `domainNames` rules (`crate::engine::dns`).
#[derive(Debug, Default)]
pub struct DnsCounters {
    /// Answers held in the queue.
    pub held: AtomicU64,
    /// Addresses added to learned sets.
    pub learned: AtomicU64,
    /// Answers that were not whole, readable DNS answers: passed, nothing learned.
    pub unparsed: AtomicU64,
    /// Learning transactions the kernel refused (the answer passed).
    pub failed: AtomicU64,
}

#[derive(Debug)]
struct DnsCollector(Arc<DnsCounters>);

impl prometheus_client::collector::Collector for DnsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        for (name, help, v) in [
            (
                "nftpol_dns_answers_held",
                "DNS answers held for domainNames rules until their addresses were programmed (only goes up)",
                &self.0.held,
            ),
            (
                "nftpol_dns_addresses_learned",
                "Addresses learned from DNS answers into domainNames rules' sets (only goes up)",
                &self.0.learned,
            ),
            (
                "nftpol_dns_answers_unparsed",
                "Held DNS answers that could not be read: passed, nothing learned (only goes up)",
                &self.0.unparsed,
            ),
            (
                "nftpol_dns_learn_failures",
                "Transactions adding learned addresses that the kernel refused (only goes up)",
                &self.0.failed,
            ),
        ] {
            let g: Monotonic = Gauge::default();
            g.set(v.load(Ordering::Relaxed));
            let e = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(e)?;
        }
        Ok(())
    }
}

/// The kinds the API source watches (or, for the Node, reads), as the `kind` label.
pub const WATCHED_KINDS: [&str; 4] = ["Namespace", "Pod", "NetworkPolicy", "Node"];

/// The metric handles and health state of one nftpol process.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at its initial value. Drop counters stay empty until
    /// [`Metrics::read_drops_from`] gives them a netlink socket.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let dataplane_failures = Monotonic::default();
        registry.register(
            "nftpol_int_dataplane_failures",
            "Number of times dataplane updates failed and will be retried (only goes up)",
            dataplane_failures.clone(),
        );
        let apply_time = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "nftpol_int_dataplane_apply_time_seconds",
            "Time in seconds for each committed nftables transaction (batch build and kernel commit)",
            apply_time.clone(),
        );
        let initial_resync_time = Seconds::default();
        registry.register(
            "nftpol_int_dataplane_initial_resync_time_seconds",
            "Time in seconds from the start of the process to the first committed ruleset",
            initial_resync_time.clone(),
        );
        let last_apply = Seconds::default();
        registry.register(
            LAST_APPLY,
            "Unix time in seconds of the last successful apply (a committed ruleset, or a check that found the kernel up to date); 0 before the first",
            last_apply.clone(),
        );
        let implementation_delay = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "nftpol_policy_implementation_delay_seconds",
            "Time in seconds from the arrival of a change (file or API event) to the commit of the ruleset enforcing it",
            implementation_delay.clone(),
        );
        let active_endpoints = Gauge::default();
        registry.register(
            "nftpol_active_local_endpoints",
            "Number of pods on this node that nftpol tracks (with an address, isolated or not)",
            active_endpoints.clone(),
        );
        let active_policies = Gauge::default();
        registry.register(
            "nftpol_active_local_policies",
            "Number of NetworkPolicies that select at least one pod on this node",
            active_policies.clone(),
        );
        let cluster_policies = Family::<Labels, Gauge>::default();
        registry.register(
            "nftpol_cluster_policies",
            "Number of ClusterNetworkPolicies (and v1alpha1 AdminNetworkPolicies and BaselineAdminNetworkPolicies) that select at least one pod on this node, by tier",
            cluster_policies.clone(),
        );
        // Both tiers are exposed from the start, at 0, so that a dashboard sees the series.
        for tier in ["Admin", "Baseline"] {
            cluster_policies.get_or_create(&vec![("tier", tier)]).set(0);
        }
        let isolated = Family::<Labels, Gauge>::default();
        registry.register(
            "nftpol_isolated_local_endpoints",
            "Number of pods on this node isolated by a policy, by direction",
            isolated.clone(),
        );
        let nft_chains = Gauge::default();
        registry.register(
            "nftpol_nft_chains",
            "Number of chains in table inet nftpol as last committed",
            nft_chains.clone(),
        );
        let nft_rules = Gauge::default();
        registry.register(
            "nftpol_nft_rules",
            "Number of rules in table inet nftpol as last committed",
            nft_rules.clone(),
        );
        let nft_set_elements = Gauge::default();
        registry.register(
            "nftpol_nft_set_elements",
            "Number of set and verdict map elements in table inet nftpol as last committed",
            nft_set_elements.clone(),
        );
        let nft_transactions = Monotonic::default();
        registry.register(
            "nftpol_nft_transactions",
            "Number of nftables transactions sent to the kernel, committed or not (only goes up)",
            nft_transactions.clone(),
        );
        let nft_errors = Monotonic::default();
        registry.register(
            "nftpol_nft_errors",
            "Number of nftables transactions the kernel rejected or did not confirm (only goes up)",
            nft_errors.clone(),
        );
        let skipped = Family::<Labels, Gauge>::default();
        registry.register(
            "nftpol_skipped_pods",
            "Number of pods on this node that nftpol does not enforce, by reason",
            skipped.clone(),
        );
        let br_netfilter = Gauge::default();
        registry.register(
            "nftpol_br_netfilter_enabled",
            "1 when bridged pod traffic goes through nftables (or the node has no Linux bridge), 0 when it bypasses the policies",
            br_netfilter.clone(),
        );
        let flow_logs = Family::<Labels, Monotonic>::default();
        registry.register(
            "nftpol_flow_logs",
            "Flow log lines written, by action: drop, audit (would drop), allow (nftpol.io/log) (only goes up)",
            flow_logs.clone(),
        );
        let flow_logs_lost = Monotonic::default();
        registry.register(
            "nftpol_flow_logs_lost",
            "Times the kernel dropped flow log messages before nftpol read them (its NFLOG socket buffer overran; each time loses one or more lines) (only goes up)",
            flow_logs_lost.clone(),
        );
        let flow_log_active = Gauge::default();
        registry.register(
            "nftpol_flow_log_active",
            "1 when nftpol reads its NFLOG group, 0 when flow logs are off or the group could not be bound",
            flow_log_active.clone(),
        );
        let drift_repairs = Monotonic::default();
        registry.register(
            "nftpol_drift_repairs",
            "Times the periodic resync found table inet nftpol differing from the last committed ruleset and replaced it (only goes up)",
            drift_repairs.clone(),
        );
        let watch_errors = Family::<Labels, Monotonic>::default();
        registry.register(
            "nftpol_watch_errors",
            "Failed lists, watches or reads of the Kubernetes API, by kind; each is retried with backoff (only goes up)",
            watch_errors.clone(),
        );
        let watch_last_event = Family::<Labels, Seconds>::default();
        registry.register(
            "nftpol_watch_last_event_timestamp_seconds",
            "Unix time of the last successful list or event (for the Node: change of its pod CIDRs) from the Kubernetes API, by kind; absent until the first",
            watch_last_event.clone(),
        );
        let strict_cut = Monotonic::default();
        registry.register(
            "nftpol_strict_cut_connections",
            "Conntrack entries deleted by --strict because the new ruleset denies their connection (only goes up)",
            strict_cut.clone(),
        );
        let strict_sweep_time = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "nftpol_strict_sweep_duration_seconds",
            "Time in seconds of each --strict conntrack sweep (dump, judge, delete)",
            strict_sweep_time.clone(),
        );
        let dns_hold_time = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "nftpol_dns_hold_seconds",
            "Time in seconds each DNS answer held for a domainNames rule waited (parse, commit of its addresses)",
            dns_hold_time.clone(),
        );
        for kind in WATCHED_KINDS {
            watch_errors.get_or_create(&vec![("kind", kind)]).set(0);
        }
        for action in ["drop", "audit", "allow"] {
            flow_logs.get_or_create(&vec![("action", action)]).set(0);
        }
        // Every label value exists from the start, so that dashboards see zeros, not gaps.
        for direction in ["ingress", "egress"] {
            isolated
                .get_or_create(&vec![("direction", direction)])
                .set(0);
        }
        for reason in [
            SkipReason::HostNetwork,
            SkipReason::NoAddress,
            SkipReason::Terminated,
        ] {
            skipped
                .get_or_create(&vec![("reason", reason.as_str())])
                .set(0);
        }
        let dns = Arc::new(DnsCounters::default());
        registry.register_collector(Box::new(DnsCollector(dns.clone())));
        let drops = Arc::new(DropCollector::default());
        registry.register_collector(Box::new(drops.clone()));
        registry.register_collector(Box::new(ProcessCollector));
        let started = Instant::now();
        Self {
            inner: Arc::new(Inner {
                registry,
                started,
                initial_resync_done: AtomicBool::new(false),
                health: Health::new(started),
                drops,
                dataplane_failures,
                apply_time,
                initial_resync_time,
                last_apply,
                implementation_delay,
                active_endpoints,
                active_policies,
                cluster_policies,
                isolated,
                nft_chains,
                nft_rules,
                nft_set_elements,
                nft_transactions,
                nft_errors,
                skipped,
                br_netfilter,
                flow_logs,
                flow_logs_lost,
                flow_log_active,
                drift_repairs,
                watch_errors,
                watch_last_event,
                strict_cut,
                strict_sweep_time,
                dns_hold_time,
                dns,
                dns_names: std::sync::Mutex::new(None),
                dns_lookup: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The DNS reader's counters (`nftpol_dns_*`), read on every scrape.
    pub fn dns_counters(&self) -> Arc<DnsCounters> {
        self.inner.dns.clone()
    }

    /// Serves `f()` (the learned names by address, JSON) at `/dns`.
    pub fn serve_dns_names(&self, f: DnsNames) {
        *self
            .inner
            .dns_names
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// Answers [`Metrics::dns_names_of`] with `f`.
    pub fn lookup_dns_names(&self, f: DnsLookup) {
        *self
            .inner
            .dns_lookup
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// The names the DNS reader learned `ip` for, as `name (rule)`.
    pub fn dns_names_of(&self, ip: std::net::IpAddr) -> Vec<String> {
        match &*self
            .inner
            .dns_lookup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(f) => f(ip),
            None => Vec::new(),
        }
    }

    /// The `/dns` document: `{}` when no DNS reader runs.
    pub fn dns_names(&self) -> String {
        match &*self
            .inner
            .dns_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(f) => f(),
            None => "{}".to_string(),
        }
    }

    pub fn observe_dns_hold(&self, d: Duration) {
        self.inner.dns_hold_time.observe(d.as_secs_f64());
    }

    /// Reads the per-pod drop counters through `reader` on every scrape.
    pub fn read_drops_from(&self, reader: CounterReader) {
        self.inner.drops.read_from(reader);
    }

    /// The whole exposition, OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }

    /// The main loop is alive: called on every wake-up.
    pub fn heartbeat(&self) {
        self.inner.health.heartbeat();
    }

    /// `Err(reason)` when the main loop has not beaten for [`LIVENESS_TIMEOUT`].
    pub fn livez(&self) -> Result<(), String> {
        self.inner.health.livez()
    }

    /// `Err(reason)` until the first ruleset is committed, after a failed transaction (until
    /// one succeeds), when bridged traffic bypasses nftables, or when the API watches stopped.
    pub fn readyz(&self) -> Result<(), String> {
        self.inner.health.readyz()
    }

    /// A ruleset was committed (or found unchanged) for a change that arrived at `since`.
    pub fn observe_apply(&self, since: Instant, ruleset: &Ruleset, stats: &Stats) {
        let i = &self.inner;
        i.implementation_delay
            .observe(since.elapsed().as_secs_f64());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        i.last_apply.set(now.map_or(0.0, |d| d.as_secs_f64()));
        if !i.initial_resync_done.swap(true, Ordering::Relaxed) {
            i.initial_resync_time.set(i.started.elapsed().as_secs_f64());
        }
        i.nft_chains.set(ruleset.chain_count() as i64);
        i.nft_rules.set(ruleset.rule_count() as i64);
        i.nft_set_elements.set(ruleset.element_count() as i64);
        self.observe_stats(stats);
        i.health.committed();
    }

    /// An apply failed and will be retried.
    pub fn observe_failure(&self, error: &dyn fmt::Display, stats: &Stats) {
        self.inner.dataplane_failures.inc();
        self.observe_stats(stats);
        self.inner.health.failed(error.to_string());
    }

    /// The duration of every committed transaction (see [`Dataplane::take_commit_times`]).
    ///
    /// [`Dataplane::take_commit_times`]: crate::dataplane::Dataplane::take_commit_times
    pub fn observe_commits(&self, times: &[Duration]) {
        for t in times {
            self.inner.apply_time.observe(t.as_secs_f64());
        }
    }

    /// The dataplane's transaction counters (after a drift repair too).
    pub fn observe_stats(&self, stats: &Stats) {
        self.inner.nft_transactions.set(stats.transactions);
        self.inner.nft_errors.set(stats.transaction_errors);
        self.inner.drift_repairs.set(stats.drift_repairs);
    }

    /// A `--strict` sweep cut `cut` connections in `took`.
    pub fn observe_sweep(&self, cut: u64, took: Duration) {
        self.inner.strict_cut.inc_by(cut);
        self.inner.strict_sweep_time.observe(took.as_secs_f64());
    }

    /// The compiled plan: endpoints, policies, isolation and skipped pods.
    pub fn observe_plan(&self, plan: &NodePlan) {
        let i = &self.inner;
        let stats = plan.stats();
        i.active_endpoints.set(stats.endpoints as i64);
        i.active_policies.set(stats.policies as i64);
        for (tier, n) in [
            ("Admin", stats.admin_cluster_policies),
            ("Baseline", stats.baseline_cluster_policies),
        ] {
            i.cluster_policies
                .get_or_create(&vec![("tier", tier)])
                .set(n as i64);
        }
        for (direction, n) in [
            ("ingress", stats.isolated_ingress),
            ("egress", stats.isolated_egress),
        ] {
            i.isolated
                .get_or_create(&vec![("direction", direction)])
                .set(n as i64);
        }
        let counts = plan.skipped_counts();
        for reason in [
            SkipReason::HostNetwork,
            SkipReason::NoAddress,
            SkipReason::Terminated,
        ] {
            let n = counts.get(&reason).copied().unwrap_or(0);
            i.skipped
                .get_or_create(&vec![("reason", reason.as_str())])
                .set(n as i64);
        }
    }

    /// Whether the NFLOG group is bound and read.
    pub fn observe_flow_log_active(&self, active: bool) {
        self.inner.flow_log_active.set(i64::from(active));
    }

    /// A flow log line was written.
    pub fn observe_flow_log(&self, action: &'static str) {
        self.inner
            .flow_logs
            .get_or_create(&vec![("action", action)])
            .inc();
    }

    /// The kernel dropped log messages `n` more times (socket buffer overruns).
    pub fn observe_flow_logs_lost(&self, n: u64) {
        self.inner.flow_logs_lost.inc_by(n);
    }

    /// The br_netfilter check: a problem makes the node unready.
    pub fn observe_br_netfilter(&self, brnf: &BrNetfilter) {
        let problem = brnf.problem();
        self.inner.br_netfilter.set(i64::from(problem.is_none()));
        self.inner.health.br_netfilter(problem);
    }

    /// An update from the API source: a watch error is a normal retry (counted, and kept for
    /// the readiness reason text); anything else means the watches of its kind deliver.
    pub fn observe_update(&self, update: &Update) {
        let kind = match update {
            Update::WatchError { kind, error } => {
                self.inner
                    .watch_errors
                    .get_or_create(&vec![("kind", *kind)])
                    .inc();
                self.inner
                    .health
                    .watch_error(Some(format!("{kind}: {error}")));
                return;
            }
            Update::Namespace(_) => "Namespace",
            Update::Pod(_) => "Pod",
            Update::Policy(_) => "NetworkPolicy",
            Update::NodePodCidrs(_) | Update::Node(_) => "Node",
            // A relist reports the three cluster policy kinds together (one merged listing).
            Update::ClusterPolicy(Change::Applied(p)) => p.key.kind.as_str(),
            Update::ClusterPolicy(Change::Deleted(k)) => k.kind.as_str(),
            Update::ClusterPolicy(Change::Relisted(_)) => "ClusterNetworkPolicy",
        };
        self.inner.health.watch_error(None);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.inner
            .watch_last_event
            .get_or_create(&vec![("kind", kind)])
            .set(now.as_secs_f64());
    }

    /// A task the daemon needs ended (the API watchers retry forever otherwise): not ready,
    /// and not live, so that the kubelet restarts the process.
    pub fn observe_stopped(&self, what: &str) {
        self.inner.health.task_stopped(what);
    }
}

const LAST_APPLY: &str = "nftpol_last_apply_timestamp_seconds";

/// What one scrape of a node's /metrics says about its health (`nftpol kubectl status`):
/// read back from the exposition text this module writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Unix time of the last successful apply, 0 before the first; `None` from an nftpol
    /// older than the metric.
    pub last_apply_unix: Option<f64>,
    pub transactions: Option<f64>,
    pub dataplane_failures: Option<f64>,
    pub nft_errors: Option<f64>,
    /// Summed over direction and namespace.
    pub dropped_packets: f64,
    pub audit_would_drop_packets: f64,
}

impl Summary {
    /// Reads the samples it knows from exposition text (Prometheus or OpenMetrics); other
    /// lines are ignored.
    pub fn parse(text: &str) -> Self {
        let mut out = Summary::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or_default().trim();
            match name {
                LAST_APPLY => out.last_apply_unix = Some(value),
                "nftpol_nft_transactions" => out.transactions = Some(value),
                "nftpol_int_dataplane_failures" => out.dataplane_failures = Some(value),
                "nftpol_nft_errors" => out.nft_errors = Some(value),
                "nftpol_dropped_packets" => out.dropped_packets += value,
                "nftpol_audit_would_drop_packets" => out.audit_would_drop_packets += value,
                _ => {}
            }
        }
        out
    }
}

/// What `run` and `daemon` do at start: a registry that knows the br_netfilter state and
/// reads the drop counters of this network namespace, served on `addr` unless disabled.
pub fn start(addr: &str, brnf: &BrNetfilter) -> anyhow::Result<Metrics> {
    let metrics = Metrics::new();
    metrics.heartbeat();
    metrics.observe_br_netfilter(brnf);
    match CounterReader::new() {
        Ok(reader) => metrics.read_drops_from(reader),
        Err(e) => tracing::warn!("no drop counters in the metrics: {e}"),
    }
    if let Some(addr) = parse_addr(addr)? {
        serve(addr, metrics.clone())?;
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the README promises, with the exact name a scraper sees.
    const NAMES: &[&str] = &[
        "nftpol_int_dataplane_failures",
        "nftpol_int_dataplane_apply_time_seconds_count",
        "nftpol_int_dataplane_apply_time_seconds_bucket",
        "nftpol_int_dataplane_initial_resync_time_seconds",
        "nftpol_last_apply_timestamp_seconds",
        "nftpol_policy_implementation_delay_seconds_sum",
        "nftpol_active_local_endpoints",
        "nftpol_active_local_policies",
        "nftpol_isolated_local_endpoints{direction=\"ingress\"}",
        "nftpol_isolated_local_endpoints{direction=\"egress\"}",
        "nftpol_cluster_policies{tier=\"Admin\"}",
        "nftpol_cluster_policies{tier=\"Baseline\"}",
        "nftpol_nft_chains",
        "nftpol_nft_rules",
        "nftpol_nft_set_elements",
        "nftpol_nft_transactions",
        "nftpol_nft_errors",
        "nftpol_skipped_pods{reason=\"hostNetwork\"}",
        "nftpol_skipped_pods{reason=\"no address\"}",
        "nftpol_skipped_pods{reason=\"terminated\"}",
        "nftpol_br_netfilter_enabled",
        "nftpol_flow_logs{action=\"drop\"}",
        "nftpol_flow_logs_lost",
        "nftpol_flow_log_active",
        "nftpol_drift_repairs",
        "nftpol_watch_errors{kind=\"Namespace\"}",
        "nftpol_watch_errors{kind=\"Pod\"}",
        "nftpol_watch_errors{kind=\"NetworkPolicy\"}",
        "nftpol_watch_errors{kind=\"Node\"}",
        "nftpol_strict_cut_connections",
        "nftpol_strict_sweep_duration_seconds_count",
        "nftpol_dns_answers_held",
        "nftpol_dns_addresses_learned",
        "nftpol_dns_answers_unparsed",
        "nftpol_dns_learn_failures",
        "nftpol_dns_hold_seconds_count",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ];

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn exposition_has_every_name_and_no_total_suffix_on_ours() {
        let m = Metrics::new();
        let text = m.encode();
        for name in NAMES {
            assert!(
                text.lines().any(|l| l
                    .strip_prefix(name)
                    .is_some_and(|r| r.starts_with([' ', '{']))),
                "{name} missing from:\n{text}"
            );
        }
        for line in text.lines().filter(|l| l.starts_with("nftpol_")) {
            let name = line.split([' ', '{']).next().unwrap_or_default();
            assert!(!name.ends_with("_total"), "{line}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn failures_and_stats_move() {
        let m = Metrics::new();
        let stats = Stats {
            transactions: 3,
            transaction_errors: 1,
            ..Default::default()
        };
        m.observe_failure(&"boom", &stats);
        m.observe_failure(&"boom", &stats);
        let text = m.encode();
        assert_eq!(sample(&text, "nftpol_int_dataplane_failures"), Some(2.0));
        assert_eq!(sample(&text, "nftpol_nft_transactions"), Some(3.0));
        assert_eq!(sample(&text, "nftpol_nft_errors"), Some(1.0));
        assert!(m.readyz().is_err());
    }

    #[test]
    fn apply_observes_histograms_and_makes_ready() {
        let m = Metrics::new();
        assert_eq!(
            m.readyz(),
            Err("the first full sync is not done".to_string())
        );
        let plan = NodePlan::default();
        let ruleset = Ruleset::build(&plan, Default::default());
        m.observe_commits(&[Duration::from_millis(3)]);
        m.observe_apply(Instant::now(), &ruleset, &Stats::default());
        m.observe_br_netfilter(&BrNetfilter {
            bridges: Vec::new(),
            call_iptables: None,
            call_ip6tables: None,
        });
        let text = m.encode();
        assert_eq!(
            sample(&text, "nftpol_int_dataplane_apply_time_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "nftpol_policy_implementation_delay_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "nftpol_nft_chains"),
            Some(ruleset.chain_count() as f64)
        );
        assert_eq!(sample(&text, "nftpol_br_netfilter_enabled"), Some(1.0));
        assert_eq!(m.readyz(), Ok(()));
        assert!(sample(&text, "nftpol_last_apply_timestamp_seconds").is_some_and(|t| t > 1e9));
        m.observe_failure(&"rejected", &Stats::default());
        assert!(m.readyz().is_err_and(|r| r.contains("rejected")));
    }

    /// The summary reads back what the registry writes, drop counters summed over their
    /// labels.
    #[test]
    fn a_summary_reads_back_the_exposition() {
        let m = Metrics::new();
        let fresh = Summary::parse(&m.encode());
        assert_eq!(fresh.last_apply_unix, Some(0.0), "no apply yet");
        assert_eq!(fresh.transactions, Some(0.0));
        let stats = Stats {
            transactions: 7,
            transaction_errors: 2,
            ..Default::default()
        };
        m.observe_failure(&"boom", &stats);
        let plan = NodePlan::default();
        m.observe_apply(
            Instant::now(),
            &Ruleset::build(&plan, Default::default()),
            &stats,
        );
        let mut text = m.encode();
        // The drop collector's families, as a node with counters writes them.
        text = text.replace(
            "# EOF\n",
            "nftpol_dropped_packets{direction=\"ingress\",namespace=\"a\"} 3\n\
             nftpol_dropped_packets{direction=\"egress\",namespace=\"b\"} 4\n\
             nftpol_audit_would_drop_packets{direction=\"ingress\",namespace=\"c\"} 5\n# EOF\n",
        );
        let s = Summary::parse(&text);
        assert_eq!(s.transactions, Some(7.0));
        assert_eq!(s.nft_errors, Some(2.0));
        assert_eq!(s.dataplane_failures, Some(1.0));
        assert_eq!(s.dropped_packets, 7.0);
        assert_eq!(s.audit_would_drop_packets, 5.0);
        assert!(s.last_apply_unix.is_some_and(|t| t > 1e9));
    }

    #[test]
    fn watch_errors_are_counted_per_kind_and_events_timestamped() {
        let m = Metrics::new();
        let err = Update::WatchError {
            kind: "Pod",
            error: "403 Forbidden".into(),
        };
        m.observe_update(&err);
        m.observe_update(&err);
        let text = m.encode();
        assert_eq!(
            sample(&text, "nftpol_watch_errors{kind=\"Pod\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "nftpol_watch_errors{kind=\"Namespace\"}"),
            Some(0.0)
        );
        assert!(
            !text.contains("nftpol_watch_last_event_timestamp_seconds{"),
            "no event yet, no timestamp: {text}"
        );
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        m.observe_update(&Update::Pod(crate::source::Change::Deleted(
            crate::policy::model::ObjectKey::new("x", "p"),
        )));
        let text = m.encode();
        let at = sample(
            &text,
            "nftpol_watch_last_event_timestamp_seconds{kind=\"Pod\"}",
        )
        .expect("timestamp of the Pod event");
        assert!(at >= before.as_secs_f64().floor(), "{at} < {before:?}");
        assert_eq!(
            sample(
                &text,
                "nftpol_watch_last_event_timestamp_seconds{kind=\"Namespace\"}"
            ),
            None
        );
    }

    #[test]
    fn a_stopped_task_fails_liveness_and_readiness() {
        let m = Metrics::new();
        m.heartbeat();
        assert_eq!(m.livez(), Ok(()));
        m.observe_stopped("the API watches");
        assert!(
            m.livez()
                .is_err_and(|r| r.contains("the API watches stopped"))
        );
        assert!(m.readyz().is_err());
    }

    #[test]
    fn drift_repairs_and_strict_sweeps_are_exported() {
        let m = Metrics::new();
        m.observe_stats(&Stats {
            drift_repairs: 3,
            ..Default::default()
        });
        m.observe_sweep(5, Duration::from_millis(20));
        m.observe_sweep(0, Duration::from_millis(2));
        let text = m.encode();
        assert_eq!(sample(&text, "nftpol_drift_repairs"), Some(3.0));
        assert_eq!(sample(&text, "nftpol_strict_cut_connections"), Some(5.0));
        assert_eq!(
            sample(&text, "nftpol_strict_sweep_duration_seconds_count"),
            Some(2.0)
        );
    }

    /// Every nftpol metric an alert in manifests/alerts.yaml uses is one this process exports
    /// (the drop counters come from the collector, which needs a kernel table).
    #[test]
    fn alerts_use_exported_metrics() {
        let alerts = include_str!("../../manifests/monitoring/alerts.yaml");
        let m = Metrics::new();
        // A family without a series is not in the exposition: give the timestamps one.
        m.observe_update(&Update::NodePodCidrs(Vec::new()));
        let text = m.encode();
        let collected = ["nftpol_dropped_packets", "nftpol_audit_would_drop_packets"];
        let mut used = 0;
        for (i, _) in alerts.match_indices("nftpol_") {
            let name: String = alerts[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if collected.contains(&name.as_str()) {
                continue;
            }
            used += 1;
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "alerts.yaml uses {name}, which is not exported"
            );
        }
        assert!(used >= 6, "{used}");
    }
}
