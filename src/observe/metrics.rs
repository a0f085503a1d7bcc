//! Prometheus metrics and health probes: owns the registry, the metric handles that the
//! enforcer and the commands update, the liveness and readiness state, and the small HTTP
//! server (`/metrics`, `/livez`, `/readyz`) on a thread of its own.
//!
//! Names follow Felix (`felix_int_dataplane_failures` becomes `nftpol_int_dataplane_failures`).
//! prometheus-client writes OpenMetrics, where a counter's sample is always `<name>_total`;
//! Felix's counters are exposed without that suffix, so ours are registered as gauges that only
//! ever go up (their help text says so). `rate()` and `increase()` work on them as on counters.
//!
//! A [`Metrics`] is a cheap handle (an `Arc`): clones share one registry. There is no global.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::dataplane::br_netfilter::BrNetfilter;
use crate::dataplane::sys::{CountedVerdict, RuleCounter};
use crate::dataplane::{CounterReader, Ruleset, Stats};
use crate::policy::compile::NodePlan;
use crate::policy::model::SkipReason;
use crate::source::Update;

/// The default `--metrics-addr`.
pub const DEFAULT_ADDR: &str = "0.0.0.0:9964";

/// The main loop is dead when its heartbeat is older than this.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the main loops must wake up (at the latest) to beat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// A gauge that only goes up: a Felix-style counter (see the module doc).
type Monotonic = Gauge<u64, AtomicU64>;
type Seconds = Gauge<f64, AtomicU64>;
type Labels = Vec<(&'static str, &'static str)>;

/// What `/readyz` looks at.
#[derive(Debug, Default)]
struct Health {
    synced: bool,
    last_tx_error: Option<String>,
    br_netfilter_problem: Option<String>,
    watches_stopped: Option<String>,
    last_watch_error: Option<String>,
}

struct Inner {
    registry: Registry,
    started: Instant,
    /// Milliseconds since `started` of the main loop's last beat.
    heartbeat_ms: AtomicU64,
    initial_resync_done: AtomicBool,
    health: Mutex<Health>,
    drops: Arc<DropCollector>,

    dataplane_failures: Monotonic,
    apply_time: Histogram,
    initial_resync_time: Seconds,
    implementation_delay: Histogram,
    active_endpoints: Gauge,
    active_policies: Gauge,
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
}

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let drops = Arc::new(DropCollector::default());
        registry.register_collector(Box::new(drops.clone()));
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            inner: Arc::new(Inner {
                registry,
                started: Instant::now(),
                heartbeat_ms: AtomicU64::new(0),
                initial_resync_done: AtomicBool::new(false),
                health: Mutex::new(Health::default()),
                drops,
                dataplane_failures,
                apply_time,
                initial_resync_time,
                implementation_delay,
                active_endpoints,
                active_policies,
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
            }),
        }
    }

    /// Reads the per-pod drop counters through `reader` on every scrape.
    pub fn read_drops_from(&self, reader: CounterReader) {
        *lock(&self.inner.drops.reader) = Some(reader);
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
        let ms = self.inner.started.elapsed().as_millis() as u64;
        self.inner.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// `Err(reason)` when the main loop has not beaten for [`LIVENESS_TIMEOUT`].
    pub fn livez(&self) -> Result<(), String> {
        let beat = Duration::from_millis(self.inner.heartbeat_ms.load(Ordering::Relaxed));
        let age = self.inner.started.elapsed().saturating_sub(beat);
        if age > LIVENESS_TIMEOUT {
            return Err(format!("the main loop has not run for {}s", age.as_secs()));
        }
        Ok(())
    }

    /// `Err(reason)` until the first ruleset is committed, after a failed transaction (until
    /// one succeeds), when bridged traffic bypasses nftables, or when the API watches stopped.
    pub fn readyz(&self) -> Result<(), String> {
        let h = lock(&self.inner.health);
        if !h.synced {
            return Err("the first full sync is not done".into());
        }
        if let Some(e) = &h.last_tx_error {
            return Err(format!("the last transaction failed: {e}"));
        }
        if let Some(p) = &h.br_netfilter_problem {
            return Err(p.clone());
        }
        if let Some(w) = &h.watches_stopped {
            return Err(w.clone());
        }
        Ok(())
    }

    /// A ruleset was committed (or found unchanged) for a change that arrived at `since`.
    pub fn observe_apply(&self, since: Instant, ruleset: &Ruleset, stats: &Stats) {
        let i = &self.inner;
        i.implementation_delay
            .observe(since.elapsed().as_secs_f64());
        if !i.initial_resync_done.swap(true, Ordering::Relaxed) {
            i.initial_resync_time.set(i.started.elapsed().as_secs_f64());
        }
        i.nft_chains.set(ruleset.chain_count() as i64);
        i.nft_rules.set(ruleset.rule_count() as i64);
        i.nft_set_elements.set(ruleset.element_count() as i64);
        self.observe_stats(stats);
        let mut h = lock(&i.health);
        h.synced = true;
        h.last_tx_error = None;
    }

    /// An apply failed and will be retried.
    pub fn observe_failure(&self, error: &dyn fmt::Display, stats: &Stats) {
        self.inner.dataplane_failures.inc();
        self.observe_stats(stats);
        lock(&self.inner.health).last_tx_error = Some(error.to_string());
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
    }

    /// The compiled plan: endpoints, policies, isolation and skipped pods.
    pub fn observe_plan(&self, plan: &NodePlan) {
        let i = &self.inner;
        let stats = plan.stats();
        i.active_endpoints.set(stats.endpoints as i64);
        i.active_policies.set(stats.policies as i64);
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
        lock(&self.inner.health).br_netfilter_problem = problem;
    }

    /// An update from the API source: a watch error is a normal retry (kept for the reason
    /// text only); anything else means the watches deliver.
    pub fn observe_update(&self, update: &Update) {
        let mut h = lock(&self.inner.health);
        h.last_watch_error = match update {
            Update::WatchError { kind, error } => Some(format!("{kind}: {error}")),
            _ => None,
        };
    }

    /// The API watchers ended (they retry forever otherwise): the node is not ready.
    pub fn observe_watches_stopped(&self) {
        let mut h = lock(&self.inner.health);
        let last = h.last_watch_error.clone();
        h.watches_stopped = Some(match last {
            Some(e) => format!("the API watches stopped (last error: {e})"),
            None => "the API watches stopped".into(),
        });
    }
}

/// Per-namespace totals of the counters ending the per-pod chains: drops, and in audit mode
/// would-be drops. The kernel's counters go back to zero when a chain is replaced or deleted;
/// the totals only go up: a counter lower than last time counts from zero. Packets counted
/// between the last scrape and a chain's removal are lost, which is the price of bounded
/// cardinality (namespaces, not pods).
#[derive(Debug, Default)]
struct DropTotals {
    last: HashMap<(String, CountedVerdict), u64>,
    /// (audit, direction, namespace) -> packets.
    totals: BTreeMap<(bool, &'static str, String), u64>,
}

/// `ing/<namespace>/<pod>` or `egr/...`: the direction and namespace of a per-pod chain.
/// Namespace names never contain `/` and are never shortened (see `pod_base_name`).
fn parse_chain(chain: &str) -> Option<(&'static str, &str)> {
    let (prefix, rest) = chain.split_once('/')?;
    let direction = match prefix {
        "ing" => "ingress",
        "egr" => "egress",
        _ => return None,
    };
    let (namespace, _) = rest.split_once('/')?;
    Some((direction, namespace))
}

impl DropTotals {
    fn update(&mut self, counters: &[RuleCounter]) {
        let mut seen = HashMap::with_capacity(counters.len());
        for c in counters {
            let audit = match c.verdict {
                CountedVerdict::Drop => false,
                CountedVerdict::Return => true,
                CountedVerdict::Other => continue,
            };
            let Some((direction, namespace)) = parse_chain(&c.chain) else {
                continue;
            };
            let key = (c.chain.clone(), c.verdict);
            let before = self.last.get(&key).copied().unwrap_or(0);
            let delta = if c.packets >= before {
                c.packets - before
            } else {
                c.packets
            };
            *self
                .totals
                .entry((audit, direction, namespace.to_string()))
                .or_default() += delta;
            seen.insert(key, c.packets);
        }
        self.last = seen;
    }
}

#[derive(Default)]
struct DropCollector {
    reader: Mutex<Option<CounterReader>>,
    totals: Mutex<DropTotals>,
}

impl fmt::Debug for DropCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropCollector").finish_non_exhaustive()
    }
}

impl Collector for DropCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut totals = lock(&self.totals);
        if let Some(reader) = lock(&self.reader).as_ref() {
            match reader.drop_counters() {
                Ok(c) => totals.update(&c),
                // Keep serving the last totals; the next scrape tries again.
                Err(e) => tracing::warn!("reading the drop counters: {e}"),
            }
        }
        for (audit, name, help) in [
            (
                false,
                "nftpol_dropped_packets",
                "Packets dropped by the policies, by direction and namespace of the pod (only goes up)",
            ),
            (
                true,
                "nftpol_audit_would_drop_packets",
                "Packets the policies would have dropped, let through in audit mode, by direction and namespace of the pod (only goes up)",
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ((a, direction, namespace), n) in &totals.totals {
                if *a == audit {
                    let labels: Vec<(&str, &str)> =
                        vec![("direction", direction), ("namespace", namespace.as_str())];
                    family.encode_family(&labels)?.encode_gauge(n)?;
                }
            }
        }
        Ok(())
    }
}

/// `process_*` metrics from /proc/self, as every Prometheus client library exposes them.
#[derive(Debug)]
struct ProcessCollector;

struct ProcStat {
    cpu_seconds: f64,
    resident_bytes: u64,
    start_time_seconds: f64,
}

fn proc_stat() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may contain spaces: fields start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14, 15 (utime, stime), 22 (starttime, ticks since boot), 24 (rss, pages); `f[0]`
    // is field 3.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
    });
    Some(ProcStat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        resident_bytes: field(24)? * page,
        start_time_seconds: boot.map_or(0.0, |b| b as f64 + field(22).unwrap_or(0) as f64 / ticks),
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(s) = proc_stat() {
            encoder
                .encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds",
                    None,
                    MetricType::Counter,
                )?
                .encode_counter::<NoLabelSet, _, f64>(&s.cpu_seconds, None)?;
            encoder
                .encode_descriptor(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&s.resident_bytes)?;
            encoder
                .encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&s.start_time_seconds)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            encoder
                .encode_descriptor(
                    "process_open_fds",
                    "Number of open file descriptors",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&(fds.count() as u64))?;
        }
        Ok(())
    }
}

/// `--metrics-addr`: `None` when disabled (`""` or `off`).
pub fn parse_addr(text: &str) -> anyhow::Result<Option<SocketAddr>> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .with_context(|| format!("--metrics-addr {text:?} is not an address:port"))
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

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, OPENMETRICS, metrics.encode()),
        "/livez" | "/readyz" => {
            let check = if path == "/livez" {
                metrics.livez()
            } else {
                metrics.readyz()
            };
            match check {
                Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
                Err(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{reason}\n"),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /livez or /readyz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// Binds `addr` now (so that a taken port fails the command at start) and serves `/metrics`,
/// `/livez` and `/readyz` from a thread with its own single-threaded runtime: the daemon's
/// watchers and the enforcer never wait for a scrape. Returns the bound address (port 0
/// picks one).
pub fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listening on {addr} for metrics"))?;
    listener
        .set_nonblocking(true)
        .context("setting the metrics socket non-blocking")?;
    let bound = listener.local_addr().context("metrics socket address")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the metrics runtime")?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept_loop(listener, metrics)))
        .context("starting the metrics thread")?;
    tracing::info!(addr = %bound, "serving /metrics, /livez and /readyz");
    Ok(bound)
}

async fn accept_loop(listener: std::net::TcpListener, metrics: Metrics) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics listener: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::task::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(&metrics, req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
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
        "nftpol_policy_implementation_delay_seconds_sum",
        "nftpol_active_local_endpoints",
        "nftpol_active_local_policies",
        "nftpol_isolated_local_endpoints{direction=\"ingress\"}",
        "nftpol_isolated_local_endpoints{direction=\"egress\"}",
        "nftpol_nft_chains",
        "nftpol_nft_rules",
        "nftpol_nft_set_elements",
        "nftpol_nft_transactions",
        "nftpol_nft_errors",
        "nftpol_skipped_pods{reason=\"hostNetwork\"}",
        "nftpol_skipped_pods{reason=\"no address\"}",
        "nftpol_skipped_pods{reason=\"terminated\"}",
        "nftpol_br_netfilter_enabled",
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
        m.observe_failure(&"rejected", &Stats::default());
        assert!(m.readyz().is_err_and(|r| r.contains("rejected")));
    }

    #[test]
    fn liveness_follows_the_heartbeat() {
        let m = Metrics::new();
        m.heartbeat();
        assert_eq!(m.livez(), Ok(()));
    }

    #[test]
    fn drop_totals_aggregate_by_namespace_and_survive_resets() {
        let c = |chain: &str, packets: u64, verdict: CountedVerdict| RuleCounter {
            chain: chain.into(),
            packets,
            verdict,
        };
        use CountedVerdict::{Drop, Other, Return};
        let mut t = DropTotals::default();
        t.update(&[
            c("ing/a/p1", 3, Drop),
            c("ing/a/p2", 4, Drop),
            c("egr/b/p1", 1, Drop),
            c("egr/c/p9", 6, Return),
            c("forward", 99, Drop),
            c("ing/a/p3", 50, Other),
        ]);
        let key = |audit: bool, d: &'static str, ns: &str| (audit, d, ns.to_string());
        assert_eq!(t.totals[&key(false, "ingress", "a")], 7);
        assert_eq!(t.totals[&key(false, "egress", "b")], 1);
        assert_eq!(t.totals[&key(true, "egress", "c")], 6);
        // p1's chain was replaced (counter back to 2), p2 went away, c/p9 left audit mode.
        t.update(&[
            c("ing/a/p1", 2, Drop),
            c("egr/b/p1", 5, Drop),
            c("egr/c/p9", 1, Drop),
        ]);
        assert_eq!(t.totals[&key(false, "ingress", "a")], 9);
        assert_eq!(t.totals[&key(false, "egress", "b")], 5);
        assert_eq!(t.totals[&key(false, "egress", "c")], 1);
        assert_eq!(t.totals[&key(true, "egress", "c")], 6);
        assert_eq!(t.totals.len(), 4);
    }

    #[test]
    fn metrics_addr_parses() {
        assert_eq!(parse_addr("").ok(), Some(None));
        assert_eq!(parse_addr("off").ok(), Some(None));
        assert_eq!(
            parse_addr(DEFAULT_ADDR).ok().flatten(),
            DEFAULT_ADDR.parse().ok()
        );
        assert!(parse_addr("nonsense").is_err());
    }

    #[test]
    fn server_answers_probes_and_metrics() {
        let m = Metrics::new();
        m.heartbeat();
        let addr = serve("127.0.0.1:0".parse().unwrap(), m.clone()).unwrap();
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        assert!(get("/livez").starts_with("HTTP/1.1 200"));
        let ready = get("/readyz");
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.contains("first full sync"));
        let metrics = get("/metrics");
        assert!(metrics.contains("nftpol_nft_transactions 0"), "{metrics}");
        assert!(metrics.contains("application/openmetrics-text"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }
}
