//! Flow logs: the packets the per-pod chains sent to NFLOG (`crate::observe::nflog` reads them) become
//! one log line each, naming the pods on both ends and the policies that decided.
//!
//! The kernel side only says what happened and in which direction (the log prefix, see
//! `LogTo`); the pod is the packet's address on that side, so the line is resolved here
//! against the plan and the index the daemon holds at that moment. Resolution is pure
//! ([`describe`]); [`FlowLogger`] adds what makes the output readable:
//! - one line per connection: a dropped TCP SYN is retransmitted (1 s, 3 s, 7 s...) and a UDP
//!   flow sends many datagrams, each logged by the kernel as new; the same 5-tuple is written
//!   once until it has been quiet for [`QUIET`];
//! - `nftpol.io/log` allow lines only for the connections a logging policy's rule allows (the
//!   kernel logs every new connection of a pod direction that any such policy isolates).
//!
//! Lines are `tracing` events of target `nftpol::flow` (text, or JSON with `--log-format
//! json`), with the fields `action`, `direction`, `src`, `src_pod`, `dst`, `dst_pod`,
//! `protocol`, `port`, `pod`, `policies`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::dataplane::ruleset::{LogAction, LogTo};
use crate::observe::metrics::Metrics;
use crate::observe::nflog::{LoggedPacket, NflogSocket, PacketInfo};
use crate::policy::compile::NodePlan;
use crate::policy::index::ClusterIndex;
use crate::policy::model::{Direction, ObjectKey, Protocol};

/// A 5-tuple seen again within this long (since it was last seen) is the same connection.
pub const QUIET: Duration = Duration::from_secs(60);
/// Remembered connections; beyond it the expired ones are forgotten, then all of them.
const MAX_REMEMBERED: usize = 16_384;

/// One logged packet, as the prefix and the headers tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub action: LogAction,
    pub direction: Direction,
    pub packet: PacketInfo,
    /// An allow logged by a ClusterNetworkPolicy `domainNames` rule (its prefix names the rule).
    pub domain_rule: bool,
}

impl Flow {
    /// `None` for a packet some other rule logged to our group.
    pub fn of(logged: &LoggedPacket) -> Option<Self> {
        let (action, direction) = LogTo::parse_prefix(&logged.prefix)?;
        Some(Flow {
            action,
            direction,
            packet: logged.packet,
            domain_rule: action == LogAction::Allow && LogTo::cluster_tag(&logged.prefix).is_some(),
        })
    }

    /// The local pod's address (whose chain logged it) and the peer's.
    fn pod_and_peer(&self) -> (IpAddr, IpAddr) {
        match self.direction {
            Direction::Ingress => (self.packet.dst, self.packet.src),
            Direction::Egress => (self.packet.src, self.packet.dst),
        }
    }
}

/// What a flow log line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowLine {
    pub action: LogAction,
    pub direction: Direction,
    pub src: IpAddr,
    pub src_pod: Option<String>,
    pub dst: IpAddr,
    pub dst_pod: Option<String>,
    /// `TCP`, `UDP`, `SCTP`, or the IP protocol number.
    pub protocol: String,
    pub port: Option<u16>,
    /// The local pod whose policies decided.
    pub pod: Option<String>,
    /// Drop and audit: the policies isolating the pod. Allow: the rules that allow it, as
    /// `namespace/name#rule`.
    pub policies: Vec<String>,
    /// The sentence a person reads.
    pub message: String,
}

fn protocol_name(number: u8) -> String {
    match number {
        6 => Protocol::Tcp.as_str().to_string(),
        17 => Protocol::Udp.as_str().to_string(),
        132 => Protocol::Sctp.as_str().to_string(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

fn protocol_of(number: u8) -> Option<Protocol> {
    match number {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

fn pod_name(index: &ClusterIndex, ip: IpAddr) -> Option<String> {
    index.pods_with_ip(ip).next().map(|p| p.key.to_string())
}

fn keys(list: &[ObjectKey]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The line for `flow`, or `None` for an allowed connection that no rule of a policy asking
/// for logs (`nftpol.io/log`) allows. `learned` gives the names (with their rule) the DNS
/// reader learned an address for, for connections a `domainNames` rule allowed.
pub fn describe(
    flow: &Flow,
    plan: &NodePlan,
    index: &ClusterIndex,
    learned: &dyn Fn(IpAddr) -> Vec<String>,
) -> Option<FlowLine> {
    let p = &flow.packet;
    let (pod_ip, peer_ip) = flow.pod_and_peer();
    let endpoint = plan.endpoint_by_ip(pod_ip);
    let isolation = endpoint.and_then(|e| e.isolation(flow.direction));
    let pod = endpoint.map(|e| e.pod.to_string());
    let dir = flow.direction;
    // A ClusterNetworkPolicy Deny rule decides before (Admin) or instead of (Baseline)
    // NetworkPolicy: the line names that rule, as the evaluator finds it for this packet (the
    // kernel's drop chain prefix names the same rule).
    let cluster_deny = match (flow.action, endpoint, protocol_of(p.protocol), p.dst_port) {
        (LogAction::Drop | LogAction::Audit, Some(e), Some(protocol), Some(port))
            if !e.cluster(dir).is_empty() =>
        {
            match crate::policy::verdict::judge_direction(e, dir, peer_ip, protocol, port).0 {
                crate::policy::verdict::SideVerdict::Cluster {
                    action: crate::policy::model::Action::Deny,
                    by,
                } => Some(by),
                _ => None,
            }
        }
        _ => None,
    };
    let (policies, message) = match (flow.action, isolation) {
        (LogAction::Allow, _) if flow.domain_rule => {
            let names = learned(peer_ip);
            let message = if names.is_empty() {
                format!(
                    "allowed by a ClusterNetworkPolicy domainNames {dir} rule (the name has expired since)"
                )
            } else {
                format!(
                    "allowed by a ClusterNetworkPolicy domainNames {dir} rule: learned for {}",
                    names.join(", ")
                )
            };
            (names, message)
        }
        (action, _) if cluster_deny.is_some() => {
            let by = cluster_deny.expect("checked");
            let what = if action == LogAction::Audit {
                "would be dropped (audit mode: let through)"
            } else {
                "dropped"
            };
            (
                vec![by.policy.to_string()],
                format!(
                    "{what} by {} {} ({} tier) {dir} rule {}: Deny",
                    by.policy.kind, by.policy.name, by.tier, by.rule
                ),
            )
        }
        (LogAction::Allow, iso) => {
            let protocol = protocol_of(p.protocol)?;
            let port = p.dst_port?;
            let rules: Vec<String> = iso?
                .allowing_rules(peer_ip, protocol, port)
                .filter(|r| index.policy(&r.policy).is_some_and(|pol| pol.log_allowed))
                .map(|r| format!("{}#{}", r.policy, r.rule))
                .collect();
            if rules.is_empty() {
                return None;
            }
            let message = format!("allowed by {dir} rule {}", rules.join(", "));
            (rules, message)
        }
        (action, Some(iso)) => {
            let them = if iso.policies.len() == 1 {
                "it"
            } else {
                "them"
            };
            let what = if action == LogAction::Audit {
                "would be dropped (audit mode: let through)"
            } else {
                "dropped"
            };
            let message = format!(
                "{what}: isolated for {dir} by {}, and no {dir} rule of {them} allows it",
                keys(&iso.policies)
            );
            (
                iso.policies.iter().map(ToString::to_string).collect(),
                message,
            )
        }
        // The rules in force and the state held here disagree: the plan changed between the
        // packet and this line, or a restarted nftpol has not listed everything yet (the
        // previous rules stay in force until it has).
        (action, None) => (
            Vec::new(),
            format!(
                "{} by the rules in force; the {dir} policies of this address are not known here (changed since, or still syncing)",
                if action == LogAction::Audit {
                    "would be dropped"
                } else {
                    "dropped"
                }
            ),
        ),
    };
    Some(FlowLine {
        action: flow.action,
        direction: dir,
        src: p.src,
        src_pod: pod_name(index, p.src),
        dst: p.dst,
        dst_pod: pod_name(index, p.dst),
        protocol: protocol_name(p.protocol),
        port: p.dst_port,
        pod,
        policies,
        message,
    })
}

/// Writes flow lines, once per connection.
#[derive(Debug, Default)]
pub struct FlowLogger {
    seen: HashMap<Flow, Instant>,
    metrics: Option<Metrics>,
}

impl FlowLogger {
    /// A logger that counts its lines in `metrics` (`nftpol_flow_logs`).
    pub fn new(metrics: Metrics) -> Self {
        FlowLogger {
            seen: HashMap::new(),
            metrics: Some(metrics),
        }
    }

    /// Whether `flow` is the first packet of its connection (and remembers it).
    fn first(&mut self, flow: &Flow, now: Instant) -> bool {
        let first = self
            .seen
            .get(flow)
            .is_none_or(|last| now.duration_since(*last) >= QUIET);
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen
                .retain(|_, last| now.duration_since(*last) < QUIET);
            if self.seen.len() >= MAX_REMEMBERED {
                self.seen.clear();
            }
        }
        self.seen.insert(*flow, now);
        first
    }

    /// The lines `packets` make, skipping repeats of a connection already written; writes
    /// them as `tracing` events too.
    pub fn log(
        &mut self,
        packets: &[LoggedPacket],
        plan: &NodePlan,
        index: &ClusterIndex,
    ) -> Vec<FlowLine> {
        let now = Instant::now();
        let mut lines = Vec::new();
        for logged in packets {
            let Some(flow) = Flow::of(logged) else {
                continue;
            };
            if !self.first(&flow, now) {
                continue;
            }
            let metrics = self.metrics.clone();
            let learned = move |ip: IpAddr| {
                metrics
                    .as_ref()
                    .map(|m| m.dns_names_of(ip))
                    .unwrap_or_default()
            };
            if let Some(line) = describe(&flow, plan, index, &learned) {
                emit(&line);
                if let Some(m) = &self.metrics {
                    m.observe_flow_log(line.action.as_str());
                }
                lines.push(line);
            }
        }
        lines
    }
}

fn endpoint_text(ip: IpAddr, port: Option<u16>, pod: &Option<String>) -> String {
    let addr = match (ip, port) {
        (IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
        (ip, Some(port)) => format!("{ip}:{port}"),
        (ip, None) => ip.to_string(),
    };
    match pod {
        Some(pod) => format!("{pod} ({addr})"),
        None => addr,
    }
}

fn emit(line: &FlowLine) {
    let src = endpoint_text(line.src, None, &line.src_pod);
    let dst = endpoint_text(line.dst, line.port, &line.dst_pod);
    tracing::info!(
        target: TARGET,
        action = line.action.as_str(),
        direction = line.direction.as_str(),
        src = %line.src,
        src_pod = line.src_pod.as_deref().unwrap_or(""),
        dst = %line.dst,
        dst_pod = line.dst_pod.as_deref().unwrap_or(""),
        protocol = %line.protocol,
        port = line.port.unwrap_or(0),
        pod = line.pod.as_deref().unwrap_or(""),
        policies = %line.policies.join(","),
        "{} {} {src} -> {dst}: {}",
        line.protocol,
        line.action.as_str(),
        line.message
    );
}

/// The log target of flow lines.
pub const TARGET: &str = "nftpol::flow";

/// A flow log line read back from the daemon's log output (`nftpol kubectl flows` reads the
/// nftpol pods' logs), whichever `--log-format` wrote it. Fields are kept as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoggedLine {
    /// As the log line has it (RFC 3339).
    pub timestamp: String,
    pub action: String,
    pub direction: String,
    pub src_pod: String,
    pub dst_pod: String,
    /// The local pod whose policies decided.
    pub pod: String,
    /// Comma-separated, as written.
    pub policies: String,
    /// The sentence a person reads.
    pub message: String,
}

impl LoggedLine {
    /// `None` for any other log line.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end();
        if line.starts_with('{') {
            Self::parse_json(line)
        } else {
            Self::parse_text(line)
        }
    }

    fn parse_json(line: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["target"].as_str() != Some(TARGET) {
            return None;
        }
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Some(LoggedLine {
            timestamp: field("timestamp"),
            action: field("action"),
            direction: field("direction"),
            src_pod: field("src_pod"),
            dst_pod: field("dst_pod"),
            pod: field("pod"),
            policies: field("policies"),
            message: field("message"),
        })
    }

    /// tracing's text format: `TIME LEVEL TARGET: MESSAGE key=value ...`, where `&str` values
    /// are quoted and escaped (Debug) and the others are written as they are (Display).
    fn parse_text(line: &str) -> Option<Self> {
        let marker = format!(" {TARGET}: ");
        let at = line.find(&marker)?;
        let timestamp = line.split_whitespace().next().unwrap_or_default();
        let rest = &line[at + marker.len()..];
        let fields_at = rest.rfind(" action=")?;
        let mut out = LoggedLine {
            timestamp: timestamp.to_string(),
            message: rest[..fields_at].to_string(),
            ..Default::default()
        };
        let mut fields = &rest[fields_at + 1..];
        while let Some((key, tail)) = fields.split_once('=') {
            let (value, tail) = text_value(tail);
            match key.trim() {
                "action" => out.action = value,
                "direction" => out.direction = value,
                "src_pod" => out.src_pod = value,
                "dst_pod" => out.dst_pod = value,
                "pod" => out.pod = value,
                "policies" => out.policies = value,
                _ => {}
            }
            fields = tail.trim_start();
        }
        Some(out)
    }

    /// Whether a pod of `namespace` is on either end.
    pub fn involves_namespace(&self, namespace: &str) -> bool {
        [&self.src_pod, &self.dst_pod, &self.pod]
            .iter()
            .any(|p| p.split_once('/').is_some_and(|(ns, _)| ns == namespace))
    }
}

/// One value of the text format and what follows it.
fn text_value(s: &str) -> (String, &str) {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find(' ').unwrap_or(s.len());
        return (s[..end].to_string(), &s[end..]);
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (value, &quoted[i + 1..]),
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                }
            }
            c => value.push(c),
        }
    }
    (value, "")
}

/// How often a group that another socket holds is tried again.
pub const BIND_RETRY: Duration = Duration::from_secs(2);

/// Sends what the kernel logs to `socket` through `tx` (wrapped by `wrap`) until the receiver
/// goes away. Each overrun of the socket's buffer (the kernel dropped one or more messages) is
/// counted on `metrics`.
fn read<E>(
    mut socket: NflogSocket,
    tx: &Sender<E>,
    wrap: fn(Vec<LoggedPacket>) -> E,
    metrics: &Metrics,
) {
    let group = socket.group();
    let mut overruns = 0;
    loop {
        match socket.recv(Duration::from_secs(1)) {
            Ok(packets) => {
                if socket.overruns() > overruns {
                    metrics.observe_flow_logs_lost(socket.overruns() - overruns);
                    overruns = socket.overruns();
                }
                if !packets.is_empty() && tx.send(wrap(packets)).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!("reading NFLOG group {group}: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Starts the flow logs of `run` and `daemon` when `group` is set: a thread (in the calling
/// thread's network namespace) binds the group and passes what the kernel logs through `tx`.
/// While another socket holds the group (a previous nftpol still exiting, ulogd, another
/// engine), flow logs are off, said once and in `nftpol_flow_log_active`, and the bind is
/// retried every [`BIND_RETRY`]; enforcement does not wait for it.
pub fn start<E: Send + 'static>(
    group: Option<u16>,
    tx: Sender<E>,
    wrap: fn(Vec<LoggedPacket>) -> E,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    metrics.observe_flow_log_active(false);
    let Some(group) = group else {
        return Ok(());
    };
    // The first try binds before this returns, so that no packet of the first ruleset is
    // logged before anyone listens.
    let first = NflogSocket::bind(group);
    match &first {
        Ok(_) => {
            tracing::info!(group, "flow logs: reading NFLOG group {group}");
            metrics.observe_flow_log_active(true);
        }
        Err(e) => tracing::error!(
            "flow logs are off until NFLOG group {group} can be bound (retrying every {}s): {e}",
            BIND_RETRY.as_secs()
        ),
    }
    let metrics = metrics.clone();
    std::thread::Builder::new()
        .name("nflog".into())
        .spawn(move || {
            let socket = match first {
                Ok(socket) => socket,
                Err(_) => loop {
                    std::thread::sleep(BIND_RETRY);
                    if let Ok(socket) = NflogSocket::bind(group) {
                        tracing::info!(group, "flow logs: reading NFLOG group {group}");
                        metrics.observe_flow_log_active(true);
                        break socket;
                    }
                },
            };
            read(socket, &tx, wrap, &metrics);
        })
        .context("starting the NFLOG reader thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::{Scope, compile};
    use crate::source::manifest;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.2, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: api}}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.3, phase: Running}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-to-db, namespace: prod, annotations: {nftpol.io/log: "true"}}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]
"#;

    fn state() -> (NodePlan, ClusterIndex) {
        use serde::Deserialize;
        let docs = serde_norway::Deserializer::from_str(MANIFESTS)
            .map(|d| serde_json::Value::deserialize(d).unwrap());
        let loaded = manifest::load_values("flowlog", docs).unwrap();
        let index = ClusterIndex::from_state(&loaded.state);
        let plan = compile(&index, &Scope::Node("n1".into()));
        (plan, index)
    }

    fn packet(src: &str, dst: &str, sport: u16, dport: u16) -> PacketInfo {
        PacketInfo {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 6,
            src_port: Some(sport),
            dst_port: Some(dport),
        }
    }

    fn logged(prefix: &str, packet: PacketInfo) -> LoggedPacket {
        LoggedPacket {
            prefix: prefix.into(),
            packet,
        }
    }

    #[test]
    fn a_drop_names_both_pods_and_the_isolating_policies() {
        let (plan, index) = state();
        let flow = Flow::of(&logged(
            "nftpol drop ingress",
            packet("10.0.0.3", "10.0.0.2", 40000, 80),
        ))
        .unwrap();
        let line = describe(&flow, &plan, &index, &|_| Vec::new()).unwrap();
        assert_eq!(line.action, LogAction::Drop);
        assert_eq!(line.src_pod.as_deref(), Some("prod/api"));
        assert_eq!(line.dst_pod.as_deref(), Some("prod/db"));
        assert_eq!(line.pod.as_deref(), Some("prod/db"));
        assert_eq!(line.policies, ["prod/api-to-db", "prod/deny"]);
        assert_eq!(line.port, Some(80));
        assert!(line.message.contains("no ingress rule of them allows it"));
    }

    #[test]
    fn a_domain_rule_allow_names_the_learned_name() {
        let (plan, index) = state();
        let flow = Flow::of(&logged(
            "nftpol allow egress Admin:c/p/e1",
            packet("10.0.0.2", "192.0.2.7", 40000, 443),
        ))
        .unwrap();
        assert!(flow.domain_rule);
        let learned = |ip: IpAddr| {
            assert_eq!(ip, "192.0.2.7".parse::<IpAddr>().unwrap(), "the peer");
            vec!["api.example.com (rule Admin:c/p/e1 apis)".to_string()]
        };
        let line = describe(&flow, &plan, &index, &learned).unwrap();
        assert!(
            line.message.ends_with(
                "domainNames egress rule: learned for api.example.com (rule Admin:c/p/e1 apis)"
            ),
            "{}",
            line.message
        );
        // A plain allow prefix is no domain rule's.
        let plain = Flow::of(&logged(
            "nftpol allow egress",
            packet("10.0.0.2", "192.0.2.7", 1, 443),
        ));
        assert!(!plain.unwrap().domain_rule);
    }

    #[test]
    fn allow_lines_only_for_rules_of_logging_policies() {
        let (plan, index) = state();
        let allowed = Flow::of(&logged(
            "nftpol allow ingress",
            packet("10.0.0.3", "10.0.0.2", 40000, 5432),
        ))
        .unwrap();
        let line = describe(&allowed, &plan, &index, &|_| Vec::new()).unwrap();
        assert_eq!(line.policies, ["prod/api-to-db#0"]);
        // Not a packet any rule allows: no allow line (the kernel would have dropped it).
        let other = Flow::of(&logged(
            "nftpol allow ingress",
            packet("10.9.9.9", "10.0.0.2", 40000, 5432),
        ))
        .unwrap();
        assert_eq!(describe(&other, &plan, &index, &|_| Vec::new()), None);
    }

    #[test]
    fn a_connection_quiet_for_a_minute_is_new_again() {
        let mut logger = FlowLogger::default();
        let flow = Flow::of(&logged(
            "nftpol drop egress",
            packet("10.0.0.2", "10.0.0.3", 40000, 53),
        ))
        .unwrap();
        let t0 = Instant::now();
        assert!(logger.first(&flow, t0));
        // Retransmissions keep it remembered, however long they go on.
        assert!(!logger.first(&flow, t0 + QUIET / 2));
        assert!(!logger.first(&flow, t0 + QUIET));
        assert!(logger.first(&flow, t0 + QUIET * 2 + Duration::from_secs(1)));
    }

    #[test]
    fn a_drop_for_an_address_no_longer_isolated_says_so() {
        let (_, index) = state();
        let flow = Flow::of(&logged(
            "nftpol drop ingress",
            packet("10.0.0.3", "10.0.0.2", 40000, 80),
        ))
        .unwrap();
        let line = describe(&flow, &NodePlan::default(), &index, &|_| Vec::new()).unwrap();
        assert_eq!(line.pod, None);
        assert!(line.policies.is_empty());
        assert!(line.message.contains("not known here"), "{}", line.message);
        assert_eq!(line.dst_pod.as_deref(), Some("prod/db"));
    }

    #[test]
    fn one_line_per_connection_and_foreign_prefixes_ignored() {
        let (plan, index) = state();
        let mut logger = FlowLogger::default();
        let syn = logged(
            "nftpol audit ingress",
            packet("10.0.0.3", "10.0.0.2", 40000, 80),
        );
        let retry = syn.clone();
        let next = logged(
            "nftpol audit ingress",
            packet("10.0.0.3", "10.0.0.2", 40001, 80),
        );
        let foreign = logged("ulogd", packet("10.0.0.3", "10.0.0.2", 1, 2));
        let lines = logger.log(&[syn, retry, foreign, next], &plan, &index);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].message.starts_with("would be dropped"));
        assert_eq!(lines[1].src, "10.0.0.3".parse::<IpAddr>().unwrap());
    }

    /// A shared buffer that a fmt subscriber writes into.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `emit` writes, with the subscriber `main` sets up for either log format.
    fn written(line: &FlowLine, json: bool) -> String {
        let buf = Buffer::default();
        let out = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false);
        if json {
            let sub = builder.json().flatten_event(true).finish();
            tracing::subscriber::with_default(sub, || emit(line));
        } else {
            tracing::subscriber::with_default(builder.finish(), || emit(line));
        }
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    /// `nftpol kubectl flows` reads back what the daemon writes, in both log formats, a
    /// message with quotes and an empty field included.
    #[test]
    fn logged_lines_read_back_in_both_formats() {
        let (plan, index) = state();
        let flow = Flow::of(&logged(
            "nftpol drop ingress",
            packet("10.0.0.3", "10.0.0.2", 40000, 80),
        ))
        .unwrap();
        let mut line = describe(&flow, &plan, &index, &|_| Vec::new()).unwrap();
        for json in [false, true] {
            let text = written(&line, json);
            let back = LoggedLine::parse(&text).unwrap_or_else(|| panic!("unparsed: {text}"));
            assert_eq!(back.action, "drop", "{text}");
            assert_eq!(back.direction, "ingress");
            assert_eq!(back.src_pod, "prod/api");
            assert_eq!(back.dst_pod, "prod/db");
            assert_eq!(back.pod, "prod/db");
            assert_eq!(back.policies, "prod/api-to-db,prod/deny");
            assert!(
                back.message
                    .starts_with("TCP drop prod/api (10.0.0.3) -> prod/db")
            );
            assert!(back.timestamp.starts_with("20"), "{text}");
            assert!(back.involves_namespace("prod") && !back.involves_namespace("pro"));
        }
        line.message = "a \"quoted\" action=x word".into();
        line.src_pod = None;
        line.policies.clear();
        for json in [false, true] {
            let text = written(&line, json);
            let back = LoggedLine::parse(&text).unwrap();
            assert!(
                back.message.ends_with("a \"quoted\" action=x word"),
                "{text}"
            );
            assert_eq!((back.src_pod.as_str(), back.policies.as_str()), ("", ""));
            assert_eq!(back.dst_pod, "prod/db", "{text}");
        }
        assert_eq!(
            LoggedLine::parse("2026-01-01T00:00:00Z  INFO nftpol::engine: applied"),
            None
        );
        assert_eq!(
            LoggedLine::parse(r#"{"target":"nftpol::engine","message":"x"}"#),
            None
        );
    }
}
