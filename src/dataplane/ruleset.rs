//! The desired nftables state of a node as plain data: table `inet nftpol`, its named sets,
//! verdict maps and chains. Pure: built from a compiled `NodePlan`, read by `render` (nft text)
//! and by the netlink programmer, and diffed between two generations.
//!
//! Layout (why, not what):
//! - Dispatch is by pod IP (`ip daddr vmap @ingress_v4`, `ip saddr vmap @egress_v4`), never by
//!   interface: on a bridge both iif and oif are the bridge, and an `oifname` map fails open.
//! - Only isolated directions get a per-pod chain; a pod no policy selects costs nothing.
//! - Per-pod chains `return` on allowed traffic instead of accepting, so that the other end's
//!   policy is still checked (egress of the client, then ingress of the server). Only the base
//!   chain policy (`accept`) lets traffic through.
//! - A per-pod chain's NetworkPolicy part is one any-port set and one `addr . proto . port`
//!   set per address family the pod has, shared by the pods that the same policies isolate
//!   ([`shared_set_name`]; the pods of a Deployment): a node's 200 pods of one app hold one copy
//!   of their 5,000 peers, not 200. A change in what those policies allow is only set-element
//!   adds and deletes; a pod's rules change when its set of policies does (a label change, a
//!   policy that starts or stops selecting it), with its logging (`nftpol.io/log`) and its
//!   audit mode. A pod whose policies resolve differently for it alone (an ingress named port
//!   its containers number differently) gets sets of its own.
//! - A chain ends with a rate-limited NFLOG statement (the flow logs, `crate::observe::flowlog`), then
//!   `counter drop`, or in audit mode `counter return`: the counter is what the metrics read.
//! - `--default-deny-unknown`: one interval set per family, `unknown_v4`/`unknown_v6`, holds
//!   the node's pod CIDRs minus every known pod address (computed here, not in the kernel), so
//!   the base chains drop a packet from or to an unknown address with one lookup per address
//!   field, whatever the number of pods.
//! - A ClusterNetworkPolicy tier is one verdict-map lookup in the pod's chain (Admin before the
//!   NetworkPolicy part, Baseline instead of it), the map shared by every pod with the same
//!   ordered rules ([`super::decide`]); a Deny's `goto` reaches a drop chain per rule, which
//!   names the rule in flow logs and is what the per-tier drop counters read.
//! - Names are derived from `namespace/name`, stable across runs; k8s names never contain `/`
//!   or `_`, so `/` separates and `_` marks a hashed suffix when a name would exceed 255 bytes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::decide::{self, Decision};
use crate::policy::compile::{Endpoint, Isolation, NodePlan, TierRule};
use crate::policy::intervals::{AddrSet, Allowed};
use crate::policy::model::{
    Action, ClusterPolicyKey, ClusterPolicyKind, Direction, ObjectKey, Pod, Protocol, Tier,
};

/// The table nftpol owns. Nothing else in the ruleset is touched.
pub const TABLE: &str = "nftpol";

/// nft refuses object names of 256 bytes or more (NFT_NAME_MAXLEN includes the NUL).
pub const MAX_NAME_LEN: usize = 255;

/// Options that change the shape of the ruleset (not only its contents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Also check traffic from the node itself to its isolated pods against their ingress
    /// policy (the output hook). Off by default: kubelet probes come from the node.
    pub police_node_traffic: bool,
    /// Drop traffic from or to an address of the node's pod CIDRs that belongs to no known
    /// pod (the `unknown_v4`/`unknown_v6` sets, filled by [`Ruleset::guard_unknown`]).
    pub default_deny_unknown: bool,
    /// `--strict`: the forward chain drops TCP packets from or to an isolated local pod that
    /// would start tracking a connection mid-stream (conntrack's loose pickup of a non-SYN
    /// packet). Without it, a connection whose entry `--strict` deleted comes back as soon as
    /// the side the policies still let open connections sends a packet (an ACK in flight is
    /// enough). Only those pods' addresses (the `strict_v4`/`strict_v6` sets): other routed
    /// traffic (asymmetric paths, after a conntrack flush) is none of nftpol's business.
    pub strict: bool,
    /// `--mode audit`: every isolated pod's chain ends in a counted `return` instead of a
    /// drop, as for a namespace annotated `nftpol.io/enforcement: audit`.
    pub audit: bool,
    /// The NFLOG group drop (and audit and `nftpol.io/log`) logs go to; `None`: no logs.
    pub nflog_group: Option<u16>,
    /// The NFQUEUE DNS answers to pods with a `domainNames` rule are held in until the daemon
    /// has added their addresses (`--dns-queue`); `None`: no hold, such rules match only what
    /// something else added (fail closed). See [`super::dns`].
    pub dns_queue: Option<u16>,
}

/// What a logged packet's prefix says happened to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogAction {
    /// Dropped: no rule of the policies isolating the pod allows it.
    Drop,
    /// Would have been dropped, let through because the pod is in audit mode.
    Audit,
    /// Allowed by the pod's policies (`nftpol.io/log`).
    Allow,
}

impl LogAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LogAction::Drop => "drop",
            LogAction::Audit => "audit",
            LogAction::Allow => "allow",
        }
    }
}

/// Kernel-side limit of the drop and audit logs of one pod direction (one `limit` per
/// chain, so a noisy pod cannot starve the others' logs), in packets per second and burst.
pub const LOG_RATE_PER_SECOND: u64 = 10;
pub const LOG_BURST: u32 = 20;

/// A log statement: NFLOG `group`, with a prefix naming the action and the direction, which
/// is all the reader needs (the pod is the packet's address on that side).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogTo {
    pub prefix: String,
    pub group: u16,
}

impl LogTo {
    pub fn new(action: LogAction, direction: Direction, group: u16) -> Self {
        LogTo {
            prefix: format!("nftpol {} {}", action.as_str(), direction.as_str()),
            group,
        }
    }

    /// The inverse of the prefix [`LogTo::new`] writes.
    pub fn parse_prefix(prefix: &str) -> Option<(LogAction, Direction)> {
        let mut words = prefix.strip_prefix("nftpol ")?.split(' ');
        let action = match words.next()? {
            "drop" => LogAction::Drop,
            "audit" => LogAction::Audit,
            "allow" => LogAction::Allow,
            _ => return None,
        };
        let direction = match words.next()? {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return None,
        };
        // A ClusterNetworkPolicy drop names its rule in a fourth word (`Admin:c/name/i0`).
        match words.next() {
            None => Some((action, direction)),
            Some(tag) if LogTo::is_cluster_tag(tag) && words.next().is_none() => {
                Some((action, direction))
            }
            Some(_) => None,
        }
    }

    fn is_cluster_tag(tag: &str) -> bool {
        tag.starts_with("Admin:") || tag.starts_with("Baseline:")
    }

    /// The ClusterNetworkPolicy rule a drop or audit prefix names (`Admin:c/name/i0`), if any.
    pub fn cluster_tag(prefix: &str) -> Option<&str> {
        prefix
            .strip_prefix("nftpol ")?
            .split(' ')
            .nth(2)
            .filter(|t| LogTo::is_cluster_tag(t))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The nft payload keyword: `ip` or `ip6`.
    pub fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }
}

/// Which address of the packet a rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrField {
    Saddr,
    Daddr,
}

impl AddrField {
    pub fn keyword(self) -> &'static str {
        match self {
            AddrField::Saddr => "saddr",
            AddrField::Daddr => "daddr",
        }
    }

    /// The peer of a direction: ingress checks the source, egress the destination.
    fn peer_of(direction: Direction) -> Self {
        match direction {
            Direction::Ingress => AddrField::Saddr,
            Direction::Egress => AddrField::Daddr,
        }
    }

    /// The pod itself in a direction: ingress dispatches on the destination, egress on the source.
    fn pod_of(direction: Direction) -> Self {
        match direction {
            Direction::Ingress => AddrField::Daddr,
            Direction::Egress => AddrField::Saddr,
        }
    }
}

/// An inclusive address range of one family (`lo` and `hi` have the same family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub lo: IpAddr,
    pub hi: IpAddr,
}

/// One element of a named set or decision map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// Any-port set: an address range.
    Addr(AddrRange),
    /// Port set: `addr range . protocol . port range`.
    Tuple {
        addrs: AddrRange,
        protocol: Protocol,
        ports: (u16, u16),
    },
    /// Decision map for protocols without ports: `addr range : verdict`.
    AddrTo { addrs: AddrRange, to: Jump },
    /// Decision map: `addr range . protocol . port range : verdict`.
    TupleTo {
        addrs: AddrRange,
        protocol: Protocol,
        ports: (u16, u16),
        to: Jump,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `type ipv4_addr; flags interval` (rbtree).
    Addr,
    /// `type ipv4_addr . inet_proto . inet_service; flags interval` (pipapo).
    AddrProtoPort,
    /// A decision map: `type ipv4_addr : verdict; flags interval`.
    AddrDecide,
    /// A decision map: `type ipv4_addr . inet_proto . inet_service : verdict; flags interval`.
    AddrProtoPortDecide,
    /// `type ipv4_addr; flags timeout`: addresses learned from DNS answers, each with its own
    /// timeout. Its elements are the daemon's at run time, never the ruleset's.
    Learned,
}

/// A named interval set (or decision map) owned by one pod direction or shared by the pods of a
/// ClusterNetworkPolicy rule list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedSet {
    pub name: String,
    pub family: Family,
    pub kind: SetKind,
    /// In the order they are programmed (and, for concatenations, listed by nft).
    pub elements: Vec<Element>,
}

/// A verdict map `ip daddr vmap @ingress_v4`: pod address -> `jump <chain>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictMap {
    pub name: String,
    pub family: Family,
    pub entries: BTreeMap<IpAddr, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `ct state established,related accept`
    CtEstablishedAccept,
    /// `ct state invalid drop`
    CtInvalidDrop,
    /// `icmpv6 type nd-neighbor-solicit accept` (or `nd-neighbor-advert`): IPv6 address
    /// resolution is not a connection; dropping it under an egress policy would cut the pod
    /// off its neighbours (node included) for every protocol, allowed ones too.
    NeighborDiscoveryAccept(NdType),
    /// `ip saddr vmap @egress_v4`
    Vmap {
        family: Family,
        field: AddrField,
        map: String,
    },
    /// `ip saddr @set [log prefix "..." group N] return`
    AddrReturn {
        family: Family,
        field: AddrField,
        set: String,
        log: Option<LogTo>,
    },
    /// `ip saddr . meta l4proto . th dport @set [log prefix "..." group N] return`
    TupleReturn {
        family: Family,
        field: AddrField,
        set: String,
        log: Option<LogTo>,
    },
    /// `limit rate 10/second burst 20 packets log prefix "..." group N`: before the end of a
    /// per-pod chain; over the limit the rule does nothing and the packet goes on.
    LimitedLog(LogTo),
    /// `counter drop`: the end of every enforced per-pod chain.
    CounterDrop,
    /// `counter return`: the end of a per-pod chain in audit mode; the counter counts what
    /// would have been dropped.
    CounterReturn,
    /// `ip saddr @strict_v4 tcp flags != syn / syn,ack ct state new drop`: no mid-stream
    /// pickup of a connection of an isolated local pod.
    TcpNewNotSynDrop {
        family: Family,
        field: AddrField,
        set: String,
    },
    /// `ip saddr @unknown_v4 drop`: an address of the pod CIDRs no known pod has.
    AddrDrop {
        family: Family,
        field: AddrField,
        set: String,
    },
    /// `ip saddr . meta l4proto . th dport vmap @map`: a ClusterNetworkPolicy tier decided in
    /// one lookup ([`super::decide`]); a miss goes on with the next rule.
    DecideTuple {
        family: Family,
        field: AddrField,
        map: String,
    },
    /// `meta l4proto != tcp meta l4proto != udp meta l4proto != sctp ip saddr vmap @map`: the
    /// same tier for protocols
    /// without ports, which only rules without `protocols` match.
    DecideOther {
        family: Family,
        field: AddrField,
        map: String,
    },
    /// `ip daddr @dnspods_v4 udp sport 53 queue num N bypass`: a DNS answer to a pod with a
    /// `domainNames` rule is held in the daemon's queue (passes when nothing reads it).
    DnsHold {
        family: Family,
        protocol: Protocol,
        set: String,
        queue: u16,
    },
    /// `[ip daddr . meta l4proto . th dport != @guard] [ip daddr != @guard] ip daddr @set
    /// [tcp dport 80[-90]] [log prefix "..." group N] <verdict>`: a `domainNames` rule's learned
    /// addresses; the log names the rule (flow logs add the name). The guard leaves to the
    /// tier's decision map what an earlier rule of the tier matches (the first match decides).
    LearnedVerdict {
        family: Family,
        field: AddrField,
        guard: Option<Guard>,
        set: String,
        ports: Option<(Protocol, u16, u16)>,
        log: Option<LogTo>,
        verdict: Jump,
    },
}

impl Rule {
    /// The NetworkPolicy set this rule looks up (`ip saddr @ing4any/...`, `... @ing4/...`).
    pub fn network_policy_set(&self) -> Option<&str> {
        match self {
            Rule::AddrReturn { set, .. } | Rule::TupleReturn { set, .. } => Some(set),
            _ => None,
        }
    }
}

/// The sets a `domainNames` rule's learned addresses must miss: what the rules before it in
/// its tier match (by `peer . protocol . port`, and by peer for other protocols).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Guard {
    pub tuple: String,
    pub other: Option<String>,
}

/// Where a ClusterNetworkPolicy decision sends a packet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Jump {
    /// Accept (and Baseline Pass): this direction allows; the other end's chain still runs.
    Return,
    /// `goto <chain>`: Deny (the rule's drop chain, which logs, counts and drops).
    Goto(String),
}

/// The ICMPv6 neighbour discovery messages every base chain lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NdType {
    NeighborSolicit,
    NeighborAdvert,
}

impl NdType {
    pub fn icmpv6_type(self) -> u8 {
        match self {
            NdType::NeighborSolicit => 135,
            NdType::NeighborAdvert => 136,
        }
    }

    pub fn keyword(self) -> &'static str {
        match self {
            NdType::NeighborSolicit => "nd-neighbor-solicit",
            NdType::NeighborAdvert => "nd-neighbor-advert",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Forward,
    Input,
    Output,
}

impl Hook {
    pub fn keyword(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Input => "input",
            Hook::Output => "output",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chain {
    pub name: String,
    /// `Some` for base chains (type filter, priority filter, policy accept).
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// The per-pod objects of one isolated direction of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDirection {
    pub pod: ObjectKey,
    pub direction: Direction,
    /// The chain the verdict map jumps to.
    pub chain: Chain,
    pub sets: Vec<NamedSet>,
    /// The pod's addresses, each dispatched to `chain` from the family's map.
    pub ips: Vec<IpAddr>,
}

/// The whole table. Field order is the order objects are created in and that
/// `nft list table` prints them in: sets, maps, then chains (pod chains before base chains).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub options: Options,
    /// Keyed by chain name (unique per pod and direction).
    pub pods: BTreeMap<String, PodDirection>,
    /// `ingress_v4`, `ingress_v6`, `egress_v4`, `egress_v6`.
    pub maps: Vec<VerdictMap>,
    pub base_chains: Vec<Chain>,
    /// Address sets of the base chains: with `default_deny_unknown`, `unknown_v4` and
    /// `unknown_v6`; with `strict`, then `strict_v4` and `strict_v6` (every isolated local
    /// pod's addresses).
    pub node_sets: Vec<NamedSet>,
    /// Sets shared by pods, by name: the NetworkPolicy sets of the pods that the same policies
    /// isolate ([`shared_set_name`]), and the ClusterNetworkPolicy decision maps, per tier,
    /// direction and family, one per distinct ordered rule list.
    pub shared_sets: BTreeMap<String, NamedSet>,
    /// The drop (or audit) chain of each Deny rule used on this node, by name: it logs with a
    /// prefix naming the rule, and counts.
    pub cluster_chains: BTreeMap<String, Chain>,
    /// `domainNames` rules used on this node: their learned-address sets and what the DNS
    /// reader needs to fill them.
    pub domains: super::dns::DomainObjects,
}

/// Name of the set of unknown pod-CIDR addresses of a family.
pub fn unknown_set_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "unknown_v4",
        Family::V6 => "unknown_v6",
    }
}

/// Name of the set of isolated local pod addresses of a family (`--strict`).
pub fn strict_set_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "strict_v4",
        Family::V6 => "strict_v6",
    }
}

/// Verdict map names, by direction and family.
pub fn map_name(direction: Direction, family: Family) -> &'static str {
    match (direction, family) {
        (Direction::Ingress, Family::V4) => "ingress_v4",
        (Direction::Ingress, Family::V6) => "ingress_v6",
        (Direction::Egress, Family::V4) => "egress_v4",
        (Direction::Egress, Family::V6) => "egress_v6",
    }
}

fn dir_prefix(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "ing",
        Direction::Egress => "egr",
    }
}

/// FNV-1a 64: stable across Rust releases and runs, unlike `DefaultHasher`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Longest prefix of any object name (`ing4any/`).
const LONGEST_PREFIX: usize = 8;

/// `namespace/name`, shortened with a hash suffix when a prefixed name would exceed 255 bytes.
/// One base per pod keeps all of a pod's object names recognisably related.
pub fn pod_base_name(pod: &ObjectKey) -> String {
    let full = format!("{}/{}", pod.namespace, pod.name);
    let budget = MAX_NAME_LEN - LONGEST_PREFIX;
    if full.len() <= budget {
        return full;
    }
    let hash = format!("_{:016x}", fnv1a64(full.as_bytes()));
    let mut cut = budget - hash.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{hash}", &full[..cut])
}

/// Per-pod chain name: `ing/<ns>/<pod>` or `egr/<ns>/<pod>`.
pub fn chain_name(pod: &ObjectKey, direction: Direction) -> String {
    format!("{}/{}", dir_prefix(direction), pod_base_name(pod))
}

/// The NetworkPolicy set shared by the pods of `namespace` that `policies` isolate in
/// `direction`: `ing4any/<ns>/_<hash>` (any port) and `ing4/<ns>/_<hash>` (addr.proto.port), the
/// hash of the policies' names. Pod names never start with `_`, so these never meet
/// [`set_name`]'s.
pub fn shared_set_name(
    namespace: &str,
    policies: &[ObjectKey],
    direction: Direction,
    family: Family,
    kind: SetKind,
) -> String {
    let any = match kind {
        SetKind::Addr | SetKind::AddrDecide => "any",
        SetKind::AddrProtoPort | SetKind::AddrProtoPortDecide | SetKind::Learned => "",
    };
    let mut identity = String::new();
    for p in policies {
        identity.push_str(&p.namespace);
        identity.push('/');
        identity.push_str(&p.name);
        identity.push(' ');
    }
    format!(
        "{}{}{any}/{namespace}/_{:016x}",
        dir_prefix(direction),
        family.digit(),
        fnv1a64(identity.as_bytes())
    )
}

/// Per-pod set names: `ing4any/<ns>/<pod>` (any port) and `ing4/<ns>/<pod>` (addr.proto.port),
/// for a pod whose sets cannot be shared.
pub fn set_name(pod: &ObjectKey, direction: Direction, family: Family, kind: SetKind) -> String {
    let any = match kind {
        SetKind::Addr | SetKind::AddrDecide => "any",
        SetKind::AddrProtoPort | SetKind::AddrProtoPortDecide | SetKind::Learned => "",
    };
    format!(
        "{}{}{any}/{}",
        dir_prefix(direction),
        family.digit(),
        pod_base_name(pod)
    )
}

/// `<k>/<name>/<i|e><index>` for a ClusterNetworkPolicy rule (k: c, a or b for the kind),
/// shortened with a hash like pod names.
pub fn cluster_rule_base(key: &ClusterPolicyKey, direction: Direction, index: usize) -> String {
    let k = match key.kind {
        ClusterPolicyKind::ClusterNetworkPolicy => 'c',
        ClusterPolicyKind::AdminNetworkPolicy => 'a',
        ClusterPolicyKind::BaselineAdminNetworkPolicy => 'b',
    };
    let d = match direction {
        Direction::Ingress => 'i',
        Direction::Egress => 'e',
    };
    let full = format!("{k}/{}/{d}{index}", key.name);
    let budget = MAX_NAME_LEN - LONGEST_PREFIX;
    if full.len() <= budget {
        return full;
    }
    let hash = format!("_{:016x}", fnv1a64(full.as_bytes()));
    let mut cut = budget - hash.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{hash}", &full[..cut])
}

/// The decision map of a rule list: `c<tier><direction><family><t|o>/<hash>` (`t`: TCP, UDP
/// and SCTP by port, `o`: other protocols), e.g. `cai4t/0123456789abcdef`.
pub fn decision_map_name(
    tier: Tier,
    direction: Direction,
    family: Family,
    ports: bool,
    list: u64,
) -> String {
    let (t, d) = tier_direction_letters(tier, direction);
    let k = if ports { 't' } else { 'o' };
    format!("c{t}{d}{}{k}/{list:016x}", family.digit())
}

/// `a`/`b` and `i`/`e`: how cluster object names spell a tier and a direction.
fn tier_direction_letters(tier: Tier, direction: Direction) -> (char, char) {
    let t = match tier {
        Tier::Admin => 'a',
        Tier::Baseline => 'b',
    };
    let d = match direction {
        Direction::Ingress => 'i',
        Direction::Egress => 'e',
    };
    (t, d)
}

/// The chain a Deny rule's matches go to: `c<tier><direction>drop/<base>` (`caidrop/...` for
/// an Admin ingress rule), or `c<tier><direction>aud/<base>` for pods in audit mode. The
/// prefix is what the drop counters are summed by (tier and direction).
pub fn cluster_drop_chain_name(
    base: &str,
    tier: Tier,
    direction: Direction,
    audit: bool,
) -> String {
    let (t, d) = tier_direction_letters(tier, direction);
    let what = if audit { "aud" } else { "drop" };
    format!("c{t}{d}{what}/{base}")
}

/// The inverse of [`cluster_drop_chain_name`]: (tier, direction, audit).
pub fn parse_cluster_drop_chain(chain: &str) -> Option<(Tier, Direction, bool)> {
    let (prefix, _) = chain.split_once('/')?;
    let b = prefix.as_bytes();
    if b.len() < 4 || b[0] != b'c' {
        return None;
    }
    let tier = match b[1] {
        b'a' => Tier::Admin,
        b'b' => Tier::Baseline,
        _ => return None,
    };
    let direction = match b[2] {
        b'i' => Direction::Ingress,
        b'e' => Direction::Egress,
        _ => return None,
    };
    let audit = match &prefix[3..] {
        "drop" => false,
        "aud" => true,
        _ => return None,
    };
    Some((tier, direction, audit))
}

/// The NFLOG prefix word that names the ClusterNetworkPolicy rule that dropped a packet:
/// `<tier>:<kind-letter>/<name>/<i|e><index>`, cut to what NFLOG carries.
pub fn cluster_log_tag(rule: &TierRule, base: &str) -> String {
    let mut tag = format!("{}:{base}", rule.tier.as_str());
    // NF_LOG_PREFIXLEN is 128 with the NUL; the prefix before the tag is at most 27 bytes.
    let mut cut = tag.len().min(100);
    while !tag.is_char_boundary(cut) {
        cut -= 1;
    }
    tag.truncate(cut);
    tag
}

pub(super) fn addr_elements(addrs: &AddrSet, family: Family) -> Vec<Element> {
    match family {
        Family::V4 => addrs
            .v4_ranges()
            .map(|(lo, hi)| {
                Element::Addr(AddrRange {
                    lo: lo.into(),
                    hi: hi.into(),
                })
            })
            .collect(),
        Family::V6 => addrs
            .v6_ranges()
            .map(|(lo, hi)| {
                Element::Addr(AddrRange {
                    lo: lo.into(),
                    hi: hi.into(),
                })
            })
            .collect(),
    }
}

fn tuple_elements(allowed: &Allowed, family: Family) -> Vec<Element> {
    let mut out = Vec::new();
    for (protocol, blocks) in &allowed.ports {
        for block in blocks {
            let ranges: Vec<AddrRange> = match family {
                Family::V4 => block
                    .addrs
                    .v4_ranges()
                    .map(|(lo, hi)| AddrRange {
                        lo: lo.into(),
                        hi: hi.into(),
                    })
                    .collect(),
                Family::V6 => block
                    .addrs
                    .v6_ranges()
                    .map(|(lo, hi)| AddrRange {
                        lo: lo.into(),
                        hi: hi.into(),
                    })
                    .collect(),
            };
            out.extend(ranges.into_iter().map(|addrs| Element::Tuple {
                addrs,
                protocol: *protocol,
                ports: (block.lo, block.hi),
            }));
        }
    }
    out
}

fn families(ips: &[IpAddr]) -> Vec<Family> {
    let mut f: Vec<Family> = ips.iter().map(Family::of).collect();
    f.sort();
    f.dedup();
    f
}

/// The objects pod chains share, filled while the chains are built: NetworkPolicy sets, and
/// the ClusterNetworkPolicy rules' maps and chains.
struct SharedObjects<'a> {
    sets: &'a mut BTreeMap<String, NamedSet>,
    /// The isolation each shared NetworkPolicy tuple set was made from: a pod whose policies
    /// give the same name but other contents (ingress named ports resolve on the pod itself)
    /// gets sets of its own.
    np_owners: HashMap<String, Arc<Isolation>>,
    chains: &'a mut BTreeMap<String, Chain>,
    domains: &'a mut super::dns::DomainObjects,
    options: Options,
}

impl SharedObjects<'_> {
    /// The drop (or audit) chain of Deny rule `r`, created on first use.
    fn drop_chain(&mut self, r: &TierRule, direction: Direction, audit: bool) -> String {
        let base = cluster_rule_base(&r.policy, direction, r.rule);
        let name = cluster_drop_chain_name(&base, r.tier, direction, audit);
        let options = self.options;
        self.chains.entry(name.clone()).or_insert_with(|| {
            let action = if audit {
                LogAction::Audit
            } else {
                LogAction::Drop
            };
            let mut rules = Vec::new();
            if let Some(group) = options.nflog_group {
                let mut to = LogTo::new(action, direction, group);
                to.prefix = format!("{} {}", to.prefix, cluster_log_tag(r, &base));
                rules.push(Rule::LimitedLog(to));
            }
            rules.push(if audit {
                Rule::CounterReturn
            } else {
                Rule::CounterDrop
            });
            Chain {
                name: name.clone(),
                hook: None,
                rules,
            }
        });
        name
    }

    /// The rules deciding one tier of a pod direction: one decision map lookup per family
    /// (two when a rule matches every protocol), the maps shared by every pod with the same
    /// ordered rules (and named ports and audit mode), created on first use for both families
    /// so that a list's shape never depends on which pods use it.
    fn tier(
        &mut self,
        rules: &[TierRule],
        tier: Tier,
        direction: Direction,
        families: &[Family],
        audit: bool,
    ) -> Vec<Rule> {
        if rules.is_empty() {
            return Vec::new();
        }
        let mut identity = format!("{tier:?} {direction:?} {audit}");
        for r in rules {
            let base = cluster_rule_base(&r.policy, direction, r.rule);
            identity.push_str(&format!(" {base}:{:?}:{:?}", r.action, r.own_ports));
        }
        let list = fnv1a64(identity.as_bytes());
        let other = rules.iter().any(|r| r.matches.all_ports);
        let tuple_name = |f| decision_map_name(tier, direction, f, true, list);
        let other_name = |f| decision_map_name(tier, direction, f, false, list);
        if !self.sets.contains_key(&tuple_name(Family::V4)) {
            // Every Deny rule's chain, matched or not: the chains then change only with the
            // policies, never with the pods (a changed chain makes the next diff a replace).
            let mut targets = BTreeMap::from([(Decision::Allow, Jump::Return)]);
            for (i, r) in rules.iter().enumerate() {
                if r.action == Action::Deny {
                    let chain = self.drop_chain(r, direction, audit);
                    targets.insert(Decision::Deny(i), Jump::Goto(chain));
                }
            }
            let flat = decide::flatten(rules);
            for family in [Family::V4, Family::V6] {
                let mut elements = Vec::new();
                for slice in &flat.ports {
                    for (d, addrs) in &slice.decisions {
                        elements.extend(ranges(addrs, family).map(|addrs| Element::TupleTo {
                            addrs,
                            protocol: slice.protocol,
                            ports: (slice.lo, slice.hi),
                            to: targets[d].clone(),
                        }));
                    }
                }
                let name = tuple_name(family);
                self.sets.insert(
                    name.clone(),
                    NamedSet {
                        name,
                        family,
                        kind: SetKind::AddrProtoPortDecide,
                        elements,
                    },
                );
                if let Some(m) = &flat.other {
                    let mut elements: Vec<Element> = m
                        .iter()
                        .flat_map(|(d, addrs)| {
                            ranges(addrs, family).map(|addrs| Element::AddrTo {
                                addrs,
                                to: targets[d].clone(),
                            })
                        })
                        .collect();
                    elements.sort();
                    let name = other_name(family);
                    self.sets.insert(
                        name.clone(),
                        NamedSet {
                            name,
                            family,
                            kind: SetKind::AddrDecide,
                            elements,
                        },
                    );
                }
            }
        }
        let field = AddrField::peer_of(direction);
        let mut out = self.learned(rules, tier, direction, families, list);
        for &family in families {
            out.push(Rule::DecideTuple {
                family,
                field,
                map: tuple_name(family),
            });
            if other {
                out.push(Rule::DecideOther {
                    family,
                    field,
                    map: other_name(family),
                });
            }
        }
        out
    }
}

impl SharedObjects<'_> {
    /// The rules of the list's `domainNames` rules, in order, before the tier's decision map:
    /// their addresses are learned at run time, so the map cannot hold them. Each one is
    /// guarded by what the rules before it match (sets shared per list), which the map still
    /// decides: the first match wins, and a `domainNames` rule can only Accept.
    fn learned(
        &mut self,
        rules: &[TierRule],
        tier: Tier,
        direction: Direction,
        families: &[Family],
        list: u64,
    ) -> Vec<Rule> {
        let mut out = Vec::new();
        for (j, r) in rules.iter().enumerate() {
            if r.matches.domains.is_empty() {
                continue;
            }
            let guard = (j > 0).then(|| {
                let name = |f: Family, k: char| {
                    let (t, d) = tier_direction_letters(tier, direction);
                    format!("c{t}{d}{}g{k}/{list:016x}.{j}", f.digit())
                };
                // Once per list: every pod that shares it shares the guard sets.
                let claimed = if self.sets.contains_key(&name(Family::V4, 't')) {
                    None
                } else {
                    Some(decide::claimed(&rules[..j]))
                };
                for (family, claimed) in claimed
                    .iter()
                    .flat_map(|c| [(Family::V4, c), (Family::V6, c)])
                {
                    let mut tuples = Vec::new();
                    for (protocol, lo, hi, addrs) in &claimed.ports {
                        tuples.extend(ranges(addrs, family).map(|addrs| Element::Tuple {
                            addrs,
                            protocol: *protocol,
                            ports: (*lo, *hi),
                        }));
                    }
                    for (kind, k, elements) in [
                        (SetKind::AddrProtoPort, 't', tuples),
                        (SetKind::Addr, 'o', addr_elements(&claimed.other, family)),
                    ] {
                        let n = name(family, k);
                        self.sets.insert(
                            n.clone(),
                            NamedSet {
                                name: n,
                                family,
                                kind,
                                elements,
                            },
                        );
                    }
                }
                move |f: Family| Guard {
                    tuple: name(f, 't'),
                    // For TCP, UDP and SCTP the tuple guard covers the rules without
                    // protocols too; only a rule that matches every protocol needs this one.
                    other: r.matches.all_ports.then(|| name(f, 'o')),
                }
            });
            let base = cluster_rule_base(&r.policy, direction, r.rule);
            let log = self.options.nflog_group.map(|group| {
                let mut to = LogTo::new(LogAction::Allow, direction, group);
                to.prefix = format!("{} {}", to.prefix, cluster_log_tag(r, &base));
                to
            });
            out.extend(self.domains.rule(
                r,
                &base,
                families,
                &Jump::Return,
                log,
                guard.as_ref().map(|g| g as &dyn Fn(Family) -> Guard),
            ));
        }
        out
    }
}

/// The address ranges of one family of `addrs`.
fn ranges(addrs: &AddrSet, family: Family) -> Box<dyn Iterator<Item = AddrRange> + '_> {
    match family {
        Family::V4 => Box::new(addrs.v4_ranges().map(|(lo, hi)| AddrRange {
            lo: lo.into(),
            hi: hi.into(),
        })),
        Family::V6 => Box::new(addrs.v6_ranges().map(|(lo, hi)| AddrRange {
            lo: lo.into(),
            hi: hi.into(),
        })),
    }
}

/// The NetworkPolicy part of a pod direction's chain: its sets and rules, ending in the
/// (logged, counted) drop.
fn network_policy_part(
    endpoint: &Endpoint,
    direction: Direction,
    iso: &Arc<Isolation>,
    options: Options,
    shared: &mut SharedObjects<'_>,
    sets: &mut Vec<NamedSet>,
    rules: &mut Vec<Rule>,
) {
    let field = AddrField::peer_of(direction);
    // `nftpol.io/log`: new connections the policy allows are logged (established ones never
    // reach the per-pod chain). Not rate limited: a `limit` over its rate would skip the
    // `return` too. The reader keeps only the lines of the policies that asked.
    let log = options
        .nflog_group
        .filter(|_| iso.log_allowed)
        .map(|group| LogTo::new(LogAction::Allow, direction, group));
    for family in families(&endpoint.ips) {
        let ns = &endpoint.pod.namespace;
        let shared_any = shared_set_name(ns, &iso.policies, direction, family, SetKind::Addr);
        let shared_tuples =
            shared_set_name(ns, &iso.policies, direction, family, SetKind::AddrProtoPort);
        let new_sets = |any: &str, tuples: &str| {
            [
                NamedSet {
                    name: any.to_string(),
                    family,
                    kind: SetKind::Addr,
                    elements: addr_elements(&iso.allowed.any_port, family),
                },
                NamedSet {
                    name: tuples.to_string(),
                    family,
                    kind: SetKind::AddrProtoPort,
                    elements: tuple_elements(&iso.allowed, family),
                },
            ]
        };
        let (any, tuples) = match shared.np_owners.get(&shared_tuples) {
            Some(owner) if Arc::ptr_eq(owner, iso) || owner.allowed == iso.allowed => {
                (shared_any, shared_tuples)
            }
            Some(_) => {
                let any = set_name(&endpoint.pod, direction, family, SetKind::Addr);
                let tuples = set_name(&endpoint.pod, direction, family, SetKind::AddrProtoPort);
                sets.extend(new_sets(&any, &tuples));
                (any, tuples)
            }
            None => {
                shared.np_owners.insert(shared_tuples.clone(), iso.clone());
                for set in new_sets(&shared_any, &shared_tuples) {
                    shared.sets.insert(set.name.clone(), set);
                }
                (shared_any, shared_tuples)
            }
        };
        rules.push(Rule::AddrReturn {
            family,
            field,
            set: any,
            log: log.clone(),
        });
        rules.push(Rule::TupleReturn {
            family,
            field,
            set: tuples,
            log: log.clone(),
        });
    }
    let audit = options.audit || endpoint.audit;
    let action = if audit {
        LogAction::Audit
    } else {
        LogAction::Drop
    };
    if let Some(group) = options.nflog_group {
        rules.push(Rule::LimitedLog(LogTo::new(action, direction, group)));
    }
    rules.push(if audit {
        Rule::CounterReturn
    } else {
        Rule::CounterDrop
    });
}

/// A pod direction's chain: its Admin tier (one lookup: Accept returns, Deny goes to the rule's
/// drop chain, Pass or no match go on), then the NetworkPolicy part if a NetworkPolicy isolates
/// the direction (final), else its Baseline tier; falling off the end returns (allows).
fn pod_direction(
    endpoint: &Endpoint,
    direction: Direction,
    options: Options,
    cluster: &mut SharedObjects<'_>,
) -> PodDirection {
    let tiers = endpoint.cluster(direction);
    let fams = families(&endpoint.ips);
    let audit = options.audit || endpoint.audit;
    let mut rules = cluster.tier(&tiers.admin, Tier::Admin, direction, &fams, audit);
    let mut sets = Vec::new();
    let isolation = match direction {
        Direction::Ingress => endpoint.ingress.as_ref(),
        Direction::Egress => endpoint.egress.as_ref(),
    };
    match isolation {
        Some(iso) => network_policy_part(
            endpoint, direction, iso, options, cluster, &mut sets, &mut rules,
        ),
        None => {
            rules.extend(cluster.tier(&tiers.baseline, Tier::Baseline, direction, &fams, audit))
        }
    }
    PodDirection {
        pod: endpoint.pod.clone(),
        direction,
        chain: Chain {
            name: chain_name(&endpoint.pod, direction),
            hook: None,
            rules,
        },
        sets,
        ips: endpoint.ips.clone(),
    }
}

fn vmap_rules(direction: Direction) -> Vec<Rule> {
    [Family::V4, Family::V6]
        .into_iter()
        .map(|family| Rule::Vmap {
            family,
            field: AddrField::pod_of(direction),
            map: map_name(direction, family).to_string(),
        })
        .collect()
}

/// `ct state established,related accept` then neighbour discovery: what every base chain
/// accepts before any policy is looked at.
fn preamble() -> Vec<Rule> {
    vec![
        Rule::CtEstablishedAccept,
        Rule::NeighborDiscoveryAccept(NdType::NeighborSolicit),
        Rule::NeighborDiscoveryAccept(NdType::NeighborAdvert),
    ]
}

/// `ip saddr @unknown_v4 drop` (and the other fields and family) when the option is on.
fn unknown_drops(options: Options, fields: &[AddrField]) -> Vec<Rule> {
    if !options.default_deny_unknown {
        return Vec::new();
    }
    let mut rules = Vec::new();
    for family in [Family::V4, Family::V6] {
        for field in fields {
            rules.push(Rule::AddrDrop {
                family,
                field: *field,
                set: unknown_set_name(family).to_string(),
            });
        }
    }
    rules
}

fn base_chains(options: Options) -> Vec<Chain> {
    let mut forward = preamble();
    forward.push(Rule::CtInvalidDrop);
    if options.strict {
        for family in [Family::V4, Family::V6] {
            for field in [AddrField::Saddr, AddrField::Daddr] {
                forward.push(Rule::TcpNewNotSynDrop {
                    family,
                    field,
                    set: strict_set_name(family).to_string(),
                });
            }
        }
    }
    forward.extend(unknown_drops(
        options,
        &[AddrField::Saddr, AddrField::Daddr],
    ));
    forward.extend(vmap_rules(Direction::Egress));
    forward.extend(vmap_rules(Direction::Ingress));
    let mut input = preamble();
    // Pod to node: only the source can be a pod address.
    input.extend(unknown_drops(options, &[AddrField::Saddr]));
    input.extend(vmap_rules(Direction::Egress));
    let mut chains = vec![
        Chain {
            name: "forward".into(),
            hook: Some(Hook::Forward),
            rules: forward,
        },
        Chain {
            name: "input".into(),
            hook: Some(Hook::Input),
            rules: input,
        },
    ];
    if options.police_node_traffic {
        let mut output = preamble();
        output.extend(unknown_drops(options, &[AddrField::Daddr]));
        output.extend(vmap_rules(Direction::Ingress));
        chains.push(Chain {
            name: "output".into(),
            hook: Some(Hook::Output),
            rules: output,
        });
    }
    chains
}

impl Ruleset {
    /// The ruleset enforcing `plan` on this node.
    pub fn build(plan: &NodePlan, options: Options) -> Self {
        let mut pods = BTreeMap::new();
        let mut maps: BTreeMap<(Direction, Family), VerdictMap> = BTreeMap::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            for family in [Family::V4, Family::V6] {
                maps.insert(
                    (direction, family),
                    VerdictMap {
                        name: map_name(direction, family).to_string(),
                        family,
                        entries: BTreeMap::new(),
                    },
                );
            }
        }
        let mut shared_sets = BTreeMap::new();
        let mut cluster_chains = BTreeMap::new();
        let mut domains = super::dns::DomainObjects::default();
        let mut cluster = SharedObjects {
            sets: &mut shared_sets,
            np_owners: HashMap::new(),
            chains: &mut cluster_chains,
            domains: &mut domains,
            options,
        };
        for endpoint in plan.endpoints.values() {
            for direction in [Direction::Ingress, Direction::Egress] {
                if !endpoint.has_chain(direction) {
                    continue;
                }
                let pd = pod_direction(endpoint, direction, options, &mut cluster);
                for ip in &endpoint.ips {
                    if let Some(map) = maps.get_mut(&(direction, Family::of(ip))) {
                        // Two endpoints never share an IP in a consistent plan; if the API
                        // briefly says otherwise, the first pod in key order keeps it.
                        map.entries
                            .entry(*ip)
                            .or_insert_with(|| pd.chain.name.clone());
                    }
                }
                pods.insert(pd.chain.name.clone(), pd);
            }
        }
        let mut node_sets = Vec::new();
        if options.default_deny_unknown {
            node_sets.extend([Family::V4, Family::V6].map(|family| NamedSet {
                name: unknown_set_name(family).to_string(),
                family,
                kind: SetKind::Addr,
                elements: Vec::new(),
            }));
        }
        if options.strict {
            let isolated =
                AddrSet::from_addrs(maps.values().flat_map(|m| m.entries.keys().copied()));
            node_sets.extend([Family::V4, Family::V6].map(|family| NamedSet {
                name: strict_set_name(family).to_string(),
                family,
                kind: SetKind::Addr,
                elements: addr_elements(&isolated, family),
            }));
        }
        let mut base_chains = base_chains(options);
        domains.finish(&pods, options, &mut base_chains, &mut node_sets);
        Ruleset {
            options,
            pods,
            maps: maps.into_values().collect(),
            base_chains,
            node_sets,
            shared_sets,
            cluster_chains,
            domains,
        }
    }

    /// With `default_deny_unknown`: fills `unknown_v4`/`unknown_v6` with the addresses of
    /// `pod_cidrs` that no address of `known` is (every pod of the cluster that has one).
    /// Without the option it does nothing. No pod CIDR: nothing is unknown.
    pub fn guard_unknown(&mut self, pod_cidrs: &[IpNet], known: impl IntoIterator<Item = IpAddr>) {
        if !self.options.default_deny_unknown {
            return;
        }
        let unknown = AddrSet::from_nets(pod_cidrs).subtract(&AddrSet::from_addrs(known));
        for set in &mut self.node_sets {
            if set.name == unknown_set_name(set.family) {
                set.elements = addr_elements(&unknown, set.family);
            }
        }
    }

    /// Every named set in creation order: the base chains' sets, the decision maps (and the
    /// guards of `domainNames` rules), the learned sets, then pod sets (by chain name).
    pub fn sets(&self) -> impl Iterator<Item = &NamedSet> {
        self.node_sets
            .iter()
            .chain(self.shared_sets.values())
            .chain(self.domains.sets.values())
            .chain(self.pods.values().flat_map(|p| p.sets.iter()))
    }

    /// Every chain in creation order: the cluster rules' drop chains, each pod's chain, then
    /// the base chains.
    pub fn chains(&self) -> impl Iterator<Item = &Chain> {
        self.cluster_chains
            .values()
            .chain(self.pods.values().map(|p| &p.chain))
            .chain(self.base_chains.iter())
    }

    pub fn element_count(&self) -> usize {
        self.sets().map(|s| s.elements.len()).sum::<usize>()
            + self.maps.iter().map(|m| m.entries.len()).sum::<usize>()
    }

    pub fn rule_count(&self) -> usize {
        self.chains().map(|c| c.rules.len()).sum()
    }

    pub fn chain_count(&self) -> usize {
        self.chains().count()
    }
}

/// The addresses `--default-deny-unknown` treats as known: every address of every pod that
/// takes part in enforcement (a Succeeded or Failed pod's address may be reused, so it is not).
pub fn known_pod_addresses<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
) -> std::collections::BTreeSet<IpAddr> {
    pods.into_iter()
        .filter(|p| p.skip_reason().is_none())
        .flat_map(|p| p.ips.iter().copied())
        .collect()
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_short() {
        let pod = ObjectKey::new("prod", "api");
        assert_eq!(chain_name(&pod, Direction::Ingress), "ing/prod/api");
        assert_eq!(
            set_name(&pod, Direction::Egress, Family::V6, SetKind::Addr),
            "egr6any/prod/api"
        );
        assert_eq!(
            set_name(&pod, Direction::Ingress, Family::V4, SetKind::AddrProtoPort),
            "ing4/prod/api"
        );
        let long = ObjectKey::new("n".repeat(63), "p".repeat(253));
        let a = set_name(&long, Direction::Ingress, Family::V4, SetKind::Addr);
        assert!(a.len() <= MAX_NAME_LEN, "{}", a.len());
        assert_eq!(
            a,
            set_name(&long, Direction::Ingress, Family::V4, SetKind::Addr)
        );
        let other = ObjectKey::new("n".repeat(63), format!("{}q", "p".repeat(252)));
        assert_ne!(pod_base_name(&long), pod_base_name(&other));
        assert!(pod_base_name(&long).contains('_'));
    }

    #[test]
    fn log_prefixes_parse_back() {
        for action in [LogAction::Drop, LogAction::Audit, LogAction::Allow] {
            for direction in [Direction::Ingress, Direction::Egress] {
                let to = LogTo::new(action, direction, 100);
                assert_eq!(LogTo::parse_prefix(&to.prefix), Some((action, direction)));
            }
        }
        for foreign in [
            "",
            "nftpol",
            "nftpol drop",
            "nftpol drop ingress x",
            "ulogd drop ingress",
        ] {
            assert_eq!(LogTo::parse_prefix(foreign), None, "{foreign:?}");
        }
        let cnp = "nftpol drop egress Admin:c/deny-dns/e0";
        assert_eq!(
            LogTo::parse_prefix(cnp),
            Some((LogAction::Drop, Direction::Egress))
        );
        assert_eq!(LogTo::cluster_tag(cnp), Some("Admin:c/deny-dns/e0"));
        assert_eq!(LogTo::cluster_tag("nftpol drop egress"), None);
        for (tier, direction, audit) in [
            (Tier::Admin, Direction::Ingress, false),
            (Tier::Baseline, Direction::Egress, true),
        ] {
            let name = cluster_drop_chain_name("c/p/i0", tier, direction, audit);
            assert!(name.len() <= MAX_NAME_LEN);
            assert_eq!(
                parse_cluster_drop_chain(&name),
                Some((tier, direction, audit))
            );
        }
        assert_eq!(parse_cluster_drop_chain("ing/ns/pod"), None);
    }

    #[test]
    fn unisolated_pods_cost_nothing() {
        let mut plan = NodePlan::default();
        let pod = ObjectKey::new("a", "b");
        plan.endpoints.insert(
            pod.clone(),
            Endpoint {
                pod,
                ips: vec!["10.0.0.1".parse().unwrap()],
                ingress: None,
                egress: None,
                audit: false,
                cluster_ingress: Default::default(),
                cluster_egress: Default::default(),
            },
        );
        let rs = Ruleset::build(&plan, Options::default());
        assert!(rs.pods.is_empty());
        assert!(rs.maps.iter().all(|m| m.entries.is_empty()));
        assert_eq!(rs.base_chains.len(), 2);
    }

    /// `--strict`'s mid-stream drop applies to packets from or to an isolated local pod only:
    /// the set holds exactly those pods' addresses, and no rule of the forward chain drops
    /// mid-stream TCP of other addresses.
    #[test]
    fn strict_midstream_drop_is_scoped_to_isolated_pod_addresses() {
        use crate::policy::compile::Isolation;
        let mut plan = NodePlan::default();
        for (name, ip, isolated) in [
            ("iso", "10.0.0.1", true),
            ("iso6", "fd00::1", true),
            ("open", "10.0.0.2", false),
        ] {
            let pod = ObjectKey::new("a", name);
            let iso = Isolation {
                policies: vec![ObjectKey::new("a", "p")],
                rules: Vec::new(),
                allowed: Allowed::default(),
                log_allowed: false,
            };
            plan.endpoints.insert(
                pod.clone(),
                Endpoint {
                    pod,
                    ips: vec![ip.parse().unwrap()],
                    ingress: isolated.then_some(Arc::new(iso)),
                    egress: None,
                    audit: false,
                    cluster_ingress: Default::default(),
                    cluster_egress: Default::default(),
                },
            );
        }
        // A pod only a ClusterNetworkPolicy selects is policed too: it is in the strict sets.
        let only = ObjectKey::new("a", "cnp-only");
        let rule = TierRule {
            policy: ClusterPolicyKey {
                kind: ClusterPolicyKind::ClusterNetworkPolicy,
                name: "deny".into(),
            },
            tier: Tier::Admin,
            priority: Some(0),
            rule: 0,
            name: None,
            action: Action::Deny,
            matches: std::sync::Arc::new(crate::policy::compile::ClusterRuleMatch {
                all_ports: true,
                peers: AddrSet::new(),
                shared: Allowed::default(),
                named_ingress: Vec::new(),
                domains: Vec::new(),
                port_ranges: Vec::new(),
            }),
            own_ports: Vec::new(),
        };
        plan.endpoints.insert(
            only.clone(),
            Endpoint {
                pod: only,
                ips: vec!["10.0.0.3".parse().unwrap()],
                ingress: None,
                egress: None,
                audit: false,
                cluster_ingress: crate::policy::compile::TierRules {
                    admin: vec![rule],
                    ..Default::default()
                },
                cluster_egress: Default::default(),
            },
        );
        let strict = Options {
            strict: true,
            ..Options::default()
        };
        let rs = Ruleset::build(&plan, strict);
        let text = crate::dataplane::render(&rs);
        let forward = &rs.base_chains[0];
        let midstream: Vec<String> = forward
            .rules
            .iter()
            .map(crate::dataplane::render::rule_text)
            .filter(|t| t.contains("tcp flags"))
            .collect();
        assert_eq!(
            midstream,
            [
                "ip saddr @strict_v4 tcp flags != syn / syn,ack ct state new drop",
                "ip daddr @strict_v4 tcp flags != syn / syn,ack ct state new drop",
                "ip6 saddr @strict_v6 tcp flags != syn / syn,ack ct state new drop",
                "ip6 daddr @strict_v6 tcp flags != syn / syn,ack ct state new drop",
            ]
        );
        let set = |name: &str| {
            let s = rs.node_sets.iter().find(|s| s.name == name).expect(name);
            s.elements
                .iter()
                .map(crate::dataplane::render::element_text)
                .collect::<Vec<_>>()
        };
        assert_eq!(set("strict_v4"), ["10.0.0.1", "10.0.0.3"], "{text}");
        assert_eq!(set("strict_v6"), ["fd00::1"], "{text}");
        // Without --strict: neither the sets nor the rules.
        let rs = Ruleset::build(&plan, Options::default());
        assert!(rs.node_sets.is_empty());
        assert!(!crate::dataplane::render(&rs).contains("tcp flags"));
    }
}
